"""The real OpenAI SDK through the ``aver proxy`` binary (no aver Python
code in the request path): a chat completion, a stream, and refusals that
arrive as HTTP 502 with ``x-aver-error`` before anything reaches the
engine."""

from __future__ import annotations

import openai
import pytest

MESSAGES = [{"role": "user", "content": "hello"}]


def client_for(proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0, timeout=30)


def test_chat_and_stream_through_aver_proxy(rig, aver_proxy):
    proxy = aver_proxy(rig.policy, rig.url)
    before = rig.counters()
    with client_for(proxy) as client:
        completion = client.chat.completions.create(model="stub-model", messages=MESSAGES)
        assert completion.choices[0].message.content == "echo: hello"
        chunks = iter(
            client.chat.completions.create(model="stub-model", messages=MESSAGES, stream=True)
        )
        first = next(chunks)
        assert first.choices[0].delta.content == "part0 "
        rig.release_stream()
        rest = [c.choices[0].delta.content for c in chunks if c.choices]
        assert rest[-1] == "last: hello"
    assert rig.counters().requests == before.requests + 2


@pytest.mark.parametrize("case", ["mismatch", "mitm"])
def test_aver_proxy_refuses_with_502(rig, aver_proxy, case):
    if case == "mismatch":
        proxy, reason = aver_proxy(rig.mismatch_policy, rig.url), "model"
    else:
        proxy, reason = aver_proxy(rig.policy, rig.mitm_url), "channel-binding"
    before = rig.counters()
    with client_for(proxy) as client:
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(
                model="stub-model", messages=[{"role": "user", "content": "secret prompt"}]
            )
    assert refused.value.status_code == 502
    assert refused.value.response.headers["x-aver-error"] == reason
    body = refused.value.response.json()
    assert body["error"]["type"] == "aver_attestation_error"
    assert body["error"]["code"] == reason
    assert rig.counters() == before, "a refused request reached the engine"
