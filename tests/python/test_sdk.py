"""The Python SDK (``aver``) against a live enclave on swtpm, through the
real OpenAI SDK: verification before any byte is sent, streaming, refusals
as typed exceptions, and the stub engine's counters as the proof that a
refused request never reached it."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import httpx
import openai
import pytest

import aver

MESSAGES = [{"role": "user", "content": "hello"}]


def openai_client(rig, policy=None, endpoint=None) -> openai.OpenAI:
    endpoint = endpoint or rig.url
    return openai.OpenAI(
        base_url=f"{endpoint}/v1",
        api_key="unused",
        max_retries=0,
        http_client=aver.httpx_client(
            policy=policy or rig.policy,
            endpoint=endpoint,
            timeout=httpx.Timeout(30.0),
        ),
    )


def test_verify_returns_the_measurements(rig):
    before = rig.counters()
    report = aver.verify(rig.url, rig.policy)
    assert report.model_digest == rig.model_digest
    assert report.engine_digest == rig.engine_digest
    assert report.ak_name == rig.ak_name
    assert report.measured_by == "enclave"
    assert report.spki_sha256.startswith("sha256:") and len(report.spki_sha256) == 71
    assert report.endpoint == rig.url.removeprefix("https://")
    assert 0 <= report.evidence_age < 30
    assert report.max_evidence_age == 300
    assert sorted(report.boot_pcrs) == list(range(8))
    assert len(report.nonce) == 64
    document = report.to_dict()
    assert document["report"]["launch"]["model"] == rig.model_digest
    assert document["report"]["akName"] == rig.ak_name
    assert document["evidenceAgeSeconds"] == report.evidence_age
    assert json.loads(report.to_json()) == document
    # Verification asks for evidence only: nothing reaches the engine.
    assert rig.counters() == before


def test_verify_takes_policy_text_and_mappings(rig):
    text = Path(rig.policy).read_text()
    assert aver.verify(rig.url, text).model_digest == rig.model_digest
    assert aver.verify(rig.url, Path(rig.policy)).model_digest == rig.model_digest


def test_verify_refuses_a_mismatching_policy(rig):
    with pytest.raises(aver.AttestationError) as refused:
        aver.verify(rig.url, rig.mismatch_policy)
    assert refused.value.reason == "model"
    assert rig.model_digest in refused.value.message
    assert "not allowed by the policy" in refused.value.message


def test_verify_refuses_a_mitm(rig):
    with pytest.raises(aver.AttestationError) as refused:
        aver.verify(rig.mitm_url, rig.policy)
    assert refused.value.reason == "channel-binding"


def test_bad_policies_are_policy_errors(rig, tmp_path):
    with pytest.raises(aver.PolicyError) as bad:
        aver.verify(rig.url, "referencePcrs: [\n")
    assert bad.value.reason == "policy-invalid"
    with pytest.raises(aver.PolicyError):
        aver.verify(rig.url, str(tmp_path / "missing.yaml"))
    with pytest.raises(aver.PolicyError):
        aver.httpx_client(policy="{}", endpoint=rig.url)
    assert isinstance(bad.value, ValueError) and isinstance(bad.value, aver.AverError)


def test_unreachable_is_a_connect_error(rig):
    with pytest.raises(aver.ConnectError) as unreachable:
        aver.verify("https://127.0.0.1:1", rig.policy, connect_timeout=5)
    assert unreachable.value.reason == "unreachable"
    with openai_client(rig, endpoint="https://127.0.0.1:1") as client:
        with pytest.raises(aver.ConnectError):
            client.chat.completions.create(model="stub-model", messages=MESSAGES)


def test_chat_completion_through_the_openai_sdk(rig):
    before = rig.counters()
    with openai_client(rig) as client:
        completion = client.chat.completions.create(model="stub-model", messages=MESSAGES)
        assert completion.choices[0].message.content == "echo: hello"
        # A second request reuses the attested proxy.
        again = client.chat.completions.create(
            model="stub-model", messages=[{"role": "user", "content": "again"}]
        )
        assert again.choices[0].message.content == "echo: again"
    after = rig.counters()
    assert after.requests == before.requests + 2
    assert after.body_bytes > before.body_bytes


def test_streaming_delivers_chunks_before_the_answer_ends(rig):
    before = rig.counters()
    with openai_client(rig) as client:
        stream = client.chat.completions.create(
            model="stub-model", messages=MESSAGES, stream=True
        )
        chunks = iter(stream)
        first = next(chunks)
        # The stub holds its last chunk back until released: seeing the
        # first one now proves it was streamed, not buffered.
        assert first.choices[0].delta.content == "part0 "
        assert rig.counters().requests == before.requests + 1
        rig.release_stream()
        rest = [c.choices[0].delta.content for c in chunks if c.choices]
    assert rest[-1] == "last: hello"
    assert "".join([first.choices[0].delta.content, *rest]).startswith("part0 part1 part2 ")


def test_policy_mismatch_raises_before_anything_is_sent(rig):
    before = rig.counters()
    with openai_client(rig, policy=rig.mismatch_policy) as client:
        with pytest.raises(aver.AttestationError) as refused:
            client.chat.completions.create(
                model="stub-model", messages=[{"role": "user", "content": "secret prompt"}]
            )
        with pytest.raises(aver.AttestationError):
            client.chat.completions.create(model="stub-model", messages=MESSAGES, stream=True)
    assert refused.value.reason == "model"
    assert "not allowed by the policy" in refused.value.message
    assert rig.counters() == before, "a refused request reached the engine"


def test_httpx_client_raises_from_the_transport(rig):
    before = rig.counters()
    with aver.httpx_client(policy=rig.mismatch_policy, endpoint=rig.url) as http:
        assert isinstance(http._transport, aver.AttestedTransport)
        assert isinstance(http._transport, httpx.HTTPTransport)
        with pytest.raises(aver.AttestationError) as refused:
            http.post("/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
    assert refused.value.reason == "model"
    assert rig.counters() == before


def test_a_mitm_relay_is_refused(rig):
    before = rig.counters()
    with openai_client(rig, endpoint=rig.mitm_url) as client:
        with pytest.raises(aver.AttestationError) as refused:
            client.chat.completions.create(
                model="stub-model", messages=[{"role": "user", "content": "secret prompt"}]
            )
    assert refused.value.reason == "channel-binding"
    assert rig.counters() == before, "a request passed the MITM"


def test_async_client(rig):
    async def run() -> tuple[str, list[str]]:
        async with openai.AsyncOpenAI(
            base_url=f"{rig.url}/v1",
            api_key="unused",
            max_retries=0,
            http_client=aver.httpx_async_client(
                policy=rig.policy, endpoint=rig.url, timeout=httpx.Timeout(30.0)
            ),
        ) as client:
            completion = await client.chat.completions.create(
                model="stub-model", messages=MESSAGES
            )
            stream = await client.chat.completions.create(
                model="stub-model", messages=MESSAGES, stream=True
            )
            parts: list[str] = []
            async for chunk in stream:
                if not chunk.choices or chunk.choices[0].delta.content is None:
                    continue
                parts.append(chunk.choices[0].delta.content)
                if len(parts) == 1:
                    await asyncio.to_thread(rig.release_stream)
            return completion.choices[0].message.content, parts

    before = rig.counters()
    content, parts = asyncio.run(run())
    assert content == "echo: hello"
    assert parts[0] == "part0 " and parts[-1] == "last: hello"
    assert rig.counters().requests == before.requests + 2


def test_async_client_refuses_a_mismatching_policy(rig):
    async def run() -> None:
        async with openai.AsyncOpenAI(
            base_url=f"{rig.url}/v1",
            api_key="unused",
            max_retries=0,
            http_client=aver.httpx_async_client(policy=rig.mismatch_policy, endpoint=rig.url),
        ) as client:
            await client.chat.completions.create(model="stub-model", messages=MESSAGES)

    before = rig.counters()
    with pytest.raises(aver.AttestationError) as refused:
        asyncio.run(run())
    assert refused.value.reason == "model"
    assert rig.counters() == before


def test_client_owns_a_private_socket(rig):
    with aver.Client(policy=rig.policy, endpoint=rig.url) as client:
        socket = Path(client.socket_path)
        assert stat.S_ISSOCK(socket.stat().st_mode)
        assert stat.S_IMODE(socket.parent.stat().st_mode) == 0o700
        assert socket.parent.stat().st_uid == os.getuid()
        with client.httpx_client() as http:
            response = http.post(
                "/v1/chat/completions", json={"model": "stub-model", "messages": MESSAGES}
            )
            assert response.status_code == 200
            assert response.json()["choices"][0]["message"]["content"] == "echo: hello"
        # Closing an httpx client it handed out leaves the proxy running.
        assert not client.closed
        assert socket.exists()
    assert client.closed
    assert not socket.parent.exists()
    client.close()  # idempotent


def test_closing_the_httpx_client_stops_its_proxy(rig):
    http = aver.httpx_client(policy=rig.policy, endpoint=rig.url)
    owner = http._transport.aver_client
    socket = Path(owner.socket_path)
    assert socket.exists()
    http.close()
    assert owner.closed and not socket.parent.exists()


def test_client_needs_exactly_one_upstream(rig):
    with pytest.raises(aver.AverError):
        aver.Client(policy=rig.policy)
    with pytest.raises(aver.AverError):
        aver.Client(policy=rig.policy, endpoint=rig.url, cluster=("llama", "ml"))


def test_cluster_upstream_errors_are_connect_errors(rig, tmp_path):
    with pytest.raises(aver.ConnectError) as unreadable:
        aver.Client(policy=rig.policy, cluster=("llama", "ml"), kubeconfig=tmp_path / "missing")
    assert unreadable.value.reason == "cluster"
    assert "kubeconfig" in unreadable.value.message


def test_errors_carry_reason_and_message_and_pickle():
    import pickle

    error = aver.AttestationError("model digest sha256:42 is not allowed", "model")
    assert (error.reason, error.message) == ("model", "model digest sha256:42 is not allowed")
    assert "[model]" in str(error)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is aver.AttestationError and copy.reason == "model"
    assert isinstance(aver.ConnectError("down"), ConnectionError)
    try:
        try:
            raise error
        except aver.AverError as inner:
            raise RuntimeError("wrapped by a library") from inner
    except RuntimeError as outer:
        assert aver.attestation_error(outer) is error
    assert aver.attestation_error(ValueError("unrelated")) is None
