"""Fixtures of the Python SDK tests: a live attested endpoint.

``rig`` runs ``aver-test-rig`` (tests/src/bin/aver-test-rig.rs): swtpm, the
stub engine, a real ``aver-enclave serve`` in front of it and a MITM relay,
once per session. The stub's counters (requests and body bytes that reached
the engine) and the release of a held-back stream go through the rig's
control URL, with the standard library only, never through the SDK under
test.

Binaries come from ``$AVER_BIN_DIR`` (default ``target/debug``; build them
with ``cargo build --workspace --bins``). With ``CI=true`` a missing swtpm or
binary fails the tests; otherwise they skip, saying why.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("AVER_BIN_DIR", ROOT / "target" / "debug"))
START_TIMEOUT = 90.0


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def skip_or_fail(reason: str) -> None:
    """Outside CI: skip, printing why. Under CI=true: fail."""
    if in_ci():
        pytest.fail(f"{reason}, and CI=true forbids skipping", pytrace=False)
    print(f"skipping: {reason}", file=sys.stderr)
    pytest.skip(reason)


def binary(name: str) -> Path:
    path = BIN_DIR / name
    if not path.is_file():
        skip_or_fail(f"{path} is not built (cargo build --workspace --bins)")
    return path


@dataclass
class Counters:
    requests: int
    body_bytes: int


@dataclass
class Rig:
    """A live enclave on swtpm in front of the stub engine."""

    url: str
    mitm_url: str
    policy: str
    mismatch_policy: str
    control_url: str
    model_digest: str
    engine_digest: str
    ak_name: str

    def counters(self) -> Counters:
        with urllib.request.urlopen(f"{self.control_url}/counters", timeout=10) as r:
            body = json.load(r)
        return Counters(body["requests"], body["bodyBytes"])

    def release_stream(self) -> None:
        """Lets the streamed answer in progress send its held-back last chunk."""
        request = urllib.request.Request(f"{self.control_url}/release", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=10) as r:
            r.read()


def read_line(process: subprocess.Popen[str], timeout: float, what: str) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            process.kill()
            raise RuntimeError(f"{what} printed nothing within {timeout:.0f}s")
        ready, _, _ = select.select([process.stdout], [], [], remaining)
        if ready:
            line = process.stdout.readline()
            if not line:
                code = process.wait(timeout=10)
                raise RuntimeError(f"{what} exited ({code}) before it was ready")
            return line


def stop(process: subprocess.Popen[str]) -> None:
    if process.stdin is not None:
        try:
            process.stdin.close()
        except OSError:
            pass
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def rig() -> Iterator[Rig]:
    if shutil.which("swtpm") is None:
        skip_or_fail("swtpm is not installed (apt-get install swtpm swtpm-tools)")
    rig_bin = binary("aver-test-rig")
    binary("aver-enclave")
    process = subprocess.Popen(
        [str(rig_bin)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready = json.loads(read_line(process, START_TIMEOUT, "aver-test-rig"))
        yield Rig(
            url=ready["enclaveUrl"],
            mitm_url=ready["mitmUrl"],
            policy=ready["policy"],
            mismatch_policy=ready["mismatchPolicy"],
            control_url=ready["controlUrl"],
            model_digest=ready["modelDigest"],
            engine_digest=ready["engineDigest"],
            ak_name=ready["akName"],
        )
    finally:
        stop(process)


@dataclass
class CliProxy:
    """A running ``aver proxy``."""

    url: str
    process: subprocess.Popen[str]


def aver_proxy_available() -> Optional[str]:
    """Why ``aver proxy`` cannot run here, or None."""
    aver = BIN_DIR / "aver"
    if not aver.is_file():
        return f"{aver} is not built (cargo build --workspace --bins)"
    help_run = subprocess.run(
        [str(aver), "proxy", "--help"], capture_output=True, text=True, timeout=30
    )
    if help_run.returncode != 0:
        return "this aver CLI has no `proxy` subcommand"
    return None


@pytest.fixture(scope="session")
def aver_proxy() -> Iterator[Callable[[str, str], CliProxy]]:
    """Starts ``aver proxy --policy P --upstream URL --listen 127.0.0.1:0``
    and returns its ``http://`` URL; stopped at the end of the session."""
    reason = aver_proxy_available()
    if reason is not None:
        skip_or_fail(reason)
    started: list[subprocess.Popen[str]] = []

    def start(policy: str, upstream: str) -> CliProxy:
        process = subprocess.Popen(
            [
                str(BIN_DIR / "aver"),
                "proxy",
                "--policy",
                policy,
                "--upstream",
                upstream,
                "--listen",
                "127.0.0.1:0",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        line = read_line(process, 30, "aver proxy").strip()
        assert line.startswith("listening on http://"), line
        return CliProxy(url=line.removeprefix("listening on "), process=process)

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
