"""A real inference engine behind the enclave: llama.cpp's ``llama-server``
(built by ``scripts/engine.sh``) with the generated chat model and the real
all-MiniLM-L6-v2 embedding model, each behind ``aver-enclave serve`` on its
own swtpm (``aver-llama-rig``, tests/src/bin/aver-llama-rig.rs).

Streaming chat through ``aver request`` and through the OpenAI SDK via
``aver proxy``, embeddings through the Python SDK, the engine reachable on
loopback only (a client in another network namespace reaches the enclave
and not the engine), and the enclave's request-size limit on a real upload
that never reaches the engine (a byte-counting relay sits between the chat
enclave and its engine).

Without the engine (``bash scripts/engine.sh``) or swtpm these tests skip
outside CI, saying why, and fail under ``CI=true``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import openai
import pytest

import aver
from conftest import BIN_DIR, binary, read_line, skip_or_fail, stop

# The rig loads two models and measures them (45 MB hashed): allow for a
# loaded machine.
RIG_TIMEOUT = 180.0
MESSAGES = [{"role": "user", "content": "hello, attested world"}]


@dataclass
class LlamaRig:
    chat_url: str
    chat_port: int
    chat_policy: str
    chat_model_digest: str
    chat_engine_port: int
    embed_url: str
    embed_port: int
    embed_policy: str
    embed_model_digest: str
    embed_engine_port: int
    max_request_bytes: int
    control_url: str

    def engine_bytes(self) -> int:
        """Bytes the chat enclave has sent to its engine so far."""
        with urllib.request.urlopen(f"{self.control_url}/counters", timeout=10) as r:
            return json.load(r)["chatEngineBytes"]


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaRig]:
    if shutil.which("swtpm") is None:
        skip_or_fail("swtpm is not installed (apt-get install swtpm swtpm-tools)")
    rig_bin = binary("aver-llama-rig")
    binary("aver-enclave")
    process = subprocess.Popen(
        [str(rig_bin)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        try:
            line = read_line(process, RIG_TIMEOUT, "aver-llama-rig")
        except RuntimeError as e:
            assert process.stderr is not None
            message = process.stderr.read().strip()
            if process.returncode == 2:
                # swtpm or the engine is missing: the rig says which.
                skip_or_fail(message)
            raise RuntimeError(f"{e}: {message}") from e
        ready = json.loads(line)
        yield LlamaRig(
            chat_url=ready["chatUrl"],
            chat_port=ready["chatPort"],
            chat_policy=ready["chatPolicy"],
            chat_model_digest=ready["chatModelDigest"],
            chat_engine_port=ready["chatEnginePort"],
            embed_url=ready["embedUrl"],
            embed_port=ready["embedPort"],
            embed_policy=ready["embedPolicy"],
            embed_model_digest=ready["embedModelDigest"],
            embed_engine_port=ready["embedEnginePort"],
            max_request_bytes=ready["maxRequestBytes"],
            control_url=ready["controlUrl"],
        )
    finally:
        stop(process)


def sse_events(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


def test_streamed_chat_through_aver_request(llama):
    before = llama.engine_bytes()
    body = {"model": "aver-tiny-chat", "stream": True, "max_tokens": 24, "messages": MESSAGES}
    run = subprocess.run(
        [
            str(BIN_DIR / "aver"),
            "request",
            "-v",
            f"{llama.chat_url}/v1/chat/completions",
            "--policy",
            llama.chat_policy,
            "-d",
            json.dumps(body),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    # The report (stderr) names the measured model: this GGUF's directory.
    assert llama.chat_model_digest in run.stderr
    events = sse_events(run.stdout)
    assert events[-1] == "[DONE]", run.stdout[-500:]
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    content = [
        c["choices"][0]["delta"]["content"]
        for c in chunks
        if c["choices"] and c["choices"][0]["delta"].get("content")
    ]
    # llama-server streams one chunk per sampled token, and the model runs
    # to max_tokens.
    assert len(content) == 24, content
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "".join(content).strip()
    assert llama.engine_bytes() > before


def test_streamed_chat_openai_sdk_via_aver_proxy(llama, aver_proxy):
    proxy = aver_proxy(llama.chat_policy, llama.chat_url)
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0)
    arrivals = []
    text = []
    usage = None
    finish = None
    stream = client.chat.completions.create(
        model="aver-tiny-chat",
        messages=MESSAGES,
        max_tokens=64,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices:
            choice = chunk.choices[0]
            if choice.delta.content:
                arrivals.append(time.monotonic())
                text.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert usage is not None and usage.completion_tokens == 64
    assert usage.prompt_tokens > len(MESSAGES)
    assert finish == "length"
    assert len(text) == 64
    # Chunks arrive as the engine samples them, not in one piece at the end.
    assert arrivals[-1] > arrivals[0]
    # The proxy attested the enclave (and shows the measured model).
    with urllib.request.urlopen(f"{proxy.url}/aver/status", timeout=10) as r:
        assert llama.chat_model_digest in r.read().decode()


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / (
        math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    )


def test_embeddings_through_the_python_sdk(llama):
    report = aver.verify(llama.embed_url, llama.embed_policy)
    assert report.model_digest == llama.embed_model_digest
    client = openai.OpenAI(
        base_url=f"{llama.embed_url}/v1",
        api_key="unused",
        max_retries=0,
        http_client=aver.httpx_client(
            policy=llama.embed_policy, endpoint=llama.embed_url, timeout=httpx.Timeout(60.0)
        ),
    )
    sentences = [
        "A man is playing a guitar.",
        "Someone is playing an instrument.",
        "The stock market fell sharply today.",
    ]
    result = client.embeddings.create(model="all-minilm-l6-v2", input=sentences)
    vectors = [d.embedding for d in sorted(result.data, key=lambda d: d.index)]
    assert [len(v) for v in vectors] == [384, 384, 384]
    for v in vectors:
        assert abs(math.sqrt(sum(x * x for x in v)) - 1.0) < 1e-3
    # The real model: paraphrases are close, unrelated sentences are not.
    related = cosine(vectors[0], vectors[1])
    unrelated = cosine(vectors[0], vectors[2])
    assert related > 0.5, related
    assert unrelated < 0.2, unrelated
    assert result.usage.prompt_tokens > len(sentences)
    # The same policy allowing only the chat model refuses this endpoint,
    # naming the model it measured.
    chat_only = Path(llama.embed_policy).read_text().replace(
        llama.embed_model_digest, llama.chat_model_digest
    )
    with pytest.raises(aver.AttestationError) as refused:
        aver.verify(llama.embed_url, chat_only)
    assert refused.value.reason == "model"
    assert llama.embed_model_digest in refused.value.message


def test_request_over_the_size_limit_never_reaches_the_engine(llama):
    client = openai.OpenAI(
        base_url=f"{llama.chat_url}/v1",
        api_key="unused",
        max_retries=0,
        http_client=aver.httpx_client(
            policy=llama.chat_policy, endpoint=llama.chat_url, timeout=httpx.Timeout(60.0)
        ),
    )
    before = llama.engine_bytes()
    big = "x" * (llama.max_request_bytes + 1024 * 1024)
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(
            model="aver-tiny-chat", messages=[{"role": "user", "content": big}], max_tokens=4
        )
    assert refused.value.status_code == 413
    assert f"{llama.max_request_bytes}-byte limit" in str(refused.value)
    assert llama.engine_bytes() == before
    # The counter is live: a small request on the same client gets through.
    answer = client.chat.completions.create(model="aver-tiny-chat", messages=MESSAGES, max_tokens=4)
    assert answer.usage.completion_tokens == 4
    assert llama.engine_bytes() > before


def connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except ConnectionRefusedError:
        return False


PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
    print("connected")
except ConnectionRefusedError:
    print("refused")
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def test_engine_reachable_only_on_loopback(llama):
    if os.geteuid() != 0 or shutil.which("ip") is None:
        skip_or_fail("a network namespace for the remote client needs root and ip(8)")
    # Another host on this machine's network: a namespace joined by a veth
    # pair, this side 10.231.0.1, the namespace 10.231.0.2.
    tag = os.getpid() % 100000
    ns, host_if, ns_if = f"aver-llama-{tag}", f"avlh{tag}", f"avln{tag}"
    here, there = "10.231.0.1", "10.231.0.2"
    ip("netns", "add", ns)
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
        ip("addr", "add", f"{here}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", ns, "addr", "add", f"{there}/30", "dev", ns_if)
        ip("-n", ns, "link", "set", ns_if, "up")

        def probe(port: int) -> str:
            run = subprocess.run(
                ["ip", "netns", "exec", ns, sys.executable, "-c", PROBE, here, str(port)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert run.returncode == 0, run.stderr
            return run.stdout.strip()

        # On this machine: the engines answer on loopback only.
        for port in (llama.chat_engine_port, llama.embed_engine_port):
            assert connects("127.0.0.1", port)
            assert not connects(here, port)
        # From the other host: the engines' ports are closed, the enclaves'
        # are open and attest.
        for port in (llama.chat_engine_port, llama.embed_engine_port):
            assert probe(port) == "refused"
        for port in (llama.chat_port, llama.embed_port):
            assert probe(port) == "connected"
        verify = subprocess.run(
            [
                "ip", "netns", "exec", ns, str(BIN_DIR / "aver"), "verify",
                f"https://{here}:{llama.chat_port}", "--policy", llama.chat_policy, "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        assert verify.returncode == 0, verify.stderr
        assert llama.chat_model_digest in verify.stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=30)
