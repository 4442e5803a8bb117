"""OpenAICompatibleProvider against the fake server over real HTTP on 127.0.0.1 (no Ray)."""

import asyncio

import pytest

from raygrade.errors import ProviderConnectionError, ProviderStatusError, RateLimitedError
from raygrade.providers.openai_compat import OpenAICompatibleProvider
from raygrade.testing.fake_openai import FakeOpenAIServer
from raygrade.testing.fake_openai import fake_provider_config as fake_provider

MSG = [{"role": "user", "content": "hello"}]
SCHEMA = {"type": "object", "properties": {"score": {"type": "number", "minimum": 0, "maximum": 4}},
          "required": ["score"], "additionalProperties": False}


def chat(provider, **kw):
    return asyncio.run(provider.chat(MSG, max_tokens=kw.pop("max_tokens", 50), temperature=0, **kw))


def test_structured_output_usage_and_headers():
    with_limits = FakeOpenAIServer(rpm=100, tpm=100_000).start()
    try:
        res = chat(OpenAICompatibleProvider(fake_provider(with_limits.base_url)), json_schema=SCHEMA)
        assert res.content == '{"score": 2.0}' and res.finish_reason == "stop"
        assert res.usage.prompt_tokens > 0 and res.usage.completion_tokens > 0
        assert res.headers["x-ratelimit-limit-requests"] == "100"
        assert int(res.headers["x-ratelimit-remaining-tokens"]) == 100_000 - with_limits.log[0].charged_tokens
        assert res.headers["x-request-id"].startswith("req_")
    finally:
        with_limits.stop()


def test_429_becomes_rate_limited_with_retry_after():
    srv = FakeOpenAIServer(rpm=1).start()
    try:
        p = OpenAICompatibleProvider(fake_provider(srv.base_url))

        async def twice():
            await p.chat(MSG, max_tokens=50, temperature=0)
            await p.chat(MSG, max_tokens=50, temperature=0)

        with pytest.raises(RateLimitedError) as ei:
            asyncio.run(twice())
        assert ei.value.provider_status == 429 and ei.value.retryable
        assert 0 < ei.value.retry_after_s <= 60
        assert [r.status for r in srv.log] == [200, 429]
    finally:
        srv.stop()


def test_bad_key_is_a_non_retryable_401(monkeypatch, fake_openai):
    monkeypatch.setenv("RAYGRADE_FAKE_KEY", "sk-wrong")
    with pytest.raises(ProviderStatusError) as ei:
        chat(OpenAICompatibleProvider(fake_provider(fake_openai.base_url)))
    assert ei.value.provider_status == 401 and not ei.value.retryable
    assert "sk-wrong" not in str(ei.value)


def test_connection_refused_is_a_connection_error():
    from raygrade.engine.local_vllm import free_port

    with pytest.raises(ProviderConnectionError):
        chat(OpenAICompatibleProvider(fake_provider(f"http://127.0.0.1:{free_port()}/v1", timeout_s=5)))
