"""Claude through the Messages API: raygrade's Anthropic adapter and the official ``anthropic`` SDK
against the fake Messages API over real HTTP on 127.0.0.1 (structured output by a forced tool,
page images, prompt caching, Anthropic's headers and errors), and a job with page images graded
end to end through the Serve app with ``kind: anthropic``."""

import asyncio
import base64
import io
import json
import uuid

import pytest

from raygrade.config import ApiConfig, BatcherConfig, ProviderConfig, RateLimitConfig, RaygradeArgs, StoreConfig
from raygrade.errors import ProviderStatusError, RateLimitedError
from raygrade.providers.anthropic_messages import AnthropicProvider, messages_request, openai_rate_limit_headers
from raygrade.providers.base import ChatRequest
from raygrade.ratelimit.window import parse_rate_limit_headers
from raygrade.testing.fake_anthropic import FakeAnthropicServer
from raygrade.tokens import claude_image_tokens

SCHEMA = {"type": "object", "properties": {"s1": {"type": "object", "properties": {"q1": {
    "type": "object", "properties": {"feedback": {"type": "string"}, "score": {"type": "number", "minimum": 0,
                                                                                "maximum": 2},
                                     "confidence": {"type": "number"}},
    "required": ["feedback", "score", "confidence"]}}, "required": ["q1"]}}, "required": ["s1"]}
LONG_SYSTEM = "Grade carefully. " + "Rubric line: award a point for each correct step. " * 120  # > 1024 tokens


def png(w=400, h=300) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), "white").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def request(system=LONG_SYSTEM, image=True, **kw) -> ChatRequest:
    user = [{"type": "text", "text": "# Student s1\n[Page 1]"}]
    if image:
        user.append({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png()}"}})
    return ChatRequest([{"role": "system", "content": system}, {"role": "user", "content": user}],
                       max_tokens=kw.pop("max_tokens", 300), temperature=0, json_schema=SCHEMA, **kw)


def config(srv, **kw) -> ProviderConfig:
    return ProviderConfig(name="claude", kind="anthropic", base_url=srv.base_url, api_key_env="RAYGRADE_FAKE_KEY",
                          model="claude-fake", image_token_rule="claude", **kw)


@pytest.fixture(scope="module")
def ant():
    srv = FakeAnthropicServer(api_key="sk-test").start()
    yield srv
    srv.stop()


@pytest.fixture
def fresh(ant):
    ant.limits = {"requests": None, "input-tokens": None, "output-tokens": None}
    ant.reset()
    yield ant
    ant.reset()


def chat(srv, req, **kw):
    async def go():
        p = AnthropicProvider(config(srv, **kw))
        try:
            return await p.chat(req)
        finally:
            await p.close()
    return asyncio.run(go())


def test_the_request_is_anthropics_own():
    kw = messages_request(ProviderConfig(kind="anthropic", api_key_env="X", model="claude-x"), request())
    assert kw["system"] == [{"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}]
    assert [m["role"] for m in kw["messages"]] == ["user"]
    image = kw["messages"][0]["content"][1]
    assert image["type"] == "image" and image["source"]["type"] == "base64" and image["source"]["media_type"] == \
        "image/png"
    assert kw["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}} and "tools" not in kw
    by_tool = messages_request(ProviderConfig(kind="anthropic", api_key_env="X", structured_output="tool"), request())
    assert by_tool["tools"][0]["input_schema"] == SCHEMA and by_tool["tool_choice"] == {"type": "tool",
                                                                                        "name": "grades"}
    assert "temperature" not in kw, "the Messages API of SDK 2.x takes no sampling parameters"
    with pytest.raises(ValueError, match="not one of kind 'openai_compatible'"):
        ProviderConfig(structured_output="tool")
    from raygrade.bulk.config import RegradeConfig

    with pytest.raises(ValueError, match="'anthropic' regrades in mode batch-api or sync, not 'vllm-batch'"):
        RegradeConfig(input="in", output="out", provider=ProviderConfig(kind="anthropic"), mode="vllm-batch")
    assert RegradeConfig(input="in", output="out", provider=ProviderConfig(kind="anthropic"), mode="batch-api")
    assert ProviderConfig(kind="anthropic").api_key_env == "ANTHROPIC_API_KEY", "the kind's own key variable"


def test_reset_times_become_seconds_under_openais_names():
    h = openai_rate_limit_headers({"anthropic-ratelimit-input-tokens-limit": "40000",
                                   "anthropic-ratelimit-input-tokens-remaining": "39000",
                                   "anthropic-ratelimit-input-tokens-reset": "2026-12-03T10:00:30Z",
                                   "anthropic-ratelimit-requests-remaining": "49"},
                                  now=1796292000.0)  # 2026-12-03T10:00:00Z
    parsed = parse_rate_limit_headers(h)
    assert parsed["input_tokens"].limit == 40000 and parsed["input_tokens"].remaining == 39000
    assert parsed["input_tokens"].reset_s == pytest.approx(30.0)
    assert parsed["requests"].remaining == 49


@pytest.mark.parametrize("mechanism", ["json_schema", "tool"])
def test_structured_output_images_usage_and_cache(fresh, mechanism):
    first = chat(fresh, request(), structured_output=mechanism)
    assert json.loads(first.content)["s1"]["q1"]["score"] == 1.0 and first.finish_reason == "stop"
    assert first.cached_tokens == 0 and fresh.log[0].cache_write > 1024
    second = chat(fresh, request(), structured_output=mechanism)
    assert json.loads(second.content)["s1"]["q1"]["score"] == 1.0
    assert second.cached_tokens == fresh.log[1].cache_read == fresh.log[0].cache_write, "the prefix is read"
    # prompt_tokens counts every input token, cached or not: the limiter settles on the provider's count
    assert second.usage.prompt_tokens == first.usage.prompt_tokens > fresh.log[1].input_tokens
    assert fresh.log[0].input_tokens > claude_image_tokens(400, 300) == 160, "the page image by Claude's rule"


def test_rate_limit_headers_reach_the_limiter_under_openais_names(fresh):
    fresh.limits = {"requests": 50, "input-tokens": 40_000, "output-tokens": 8_000}
    fresh.reset()
    res = chat(fresh, request(image=False))
    parsed = parse_rate_limit_headers(res.headers)
    assert parsed["requests"].limit == 50 and parsed["requests"].remaining == 49
    assert parsed["input_tokens"].limit == 40_000 and parsed["input_tokens"].remaining % 1000 == 0, "rounded"
    assert parsed["output_tokens"].limit == 8_000 and 0 < parsed["input_tokens"].reset_s <= 60
    assert "tokens" not in parsed, "input and output stay apart"


def test_429_is_rate_limited_with_retry_after_and_529_is_a_retryable_status(fresh):
    fresh.script[:] = ["rate_limited"]
    with pytest.raises(RateLimitedError) as e429:
        chat(fresh, request())
    assert e429.value.provider_status == 429 and e429.value.retry_after_s == 1 and e429.value.code == \
        "rate_limit_error"
    fresh.script[:] = ["overloaded"]
    with pytest.raises(ProviderStatusError) as e529:
        chat(fresh, request())
    assert e529.value.provider_status == 529 and e529.value.retryable and e529.value.code == "overloaded_error"


def test_a_wrong_key_and_a_refusal(fresh, monkeypatch):
    monkeypatch.setenv("RAYGRADE_FAKE_KEY", "sk-wrong")
    with pytest.raises(ProviderStatusError) as e401:
        chat(fresh, request())
    assert e401.value.provider_status == 401 and not e401.value.retryable
    assert "sk-wrong" not in str(e401.value)
    monkeypatch.undo()
    fresh.script[:] = ["refusal"]
    res = chat(fresh, request())
    assert res.content is None and "can't help" in res.refusal


def test_a_page_image_job_through_the_serve_app_on_claude(serve_url, fresh, monkeypatch):
    """The shipped path: a job with page images, Grader replicas on ``kind: anthropic`` through the
    shared limiter (limits learned from Anthropic's headers), each request's prefix cached."""
    from ray import serve

    from raygrade.app import build_app
    from raygrade.blobs import image_size
    from raygrade.cli import Client
    from raygrade.datasets.render import render_pages
    from raygrade.protocol import GradingJob

    fresh.limits = {"requests": 1000, "input-tokens": 2_000_000, "output-tokens": 400_000}
    fresh.reset()
    examples = [{"answer": f"Example answer {i}: a router forwards packets by destination address.",
                 "score": i % 3} for i in range(40)]  # a prefix long enough to cache
    pages = [render_pages("A router forwards packets.", seed=i)[0] for i in range(6)]
    job = GradingJob.model_validate({
        "assessment": {"questions": [{"id": "q1", "prompt": "What does a router do?", "max_score": 2,
                                      "reference_answer": "It forwards packets between networks.",
                                      "examples": examples}]},
        "submissions": [{"student_id": f"st{i}", "pages": [
            {"type": "image", "data": base64.b64encode(p).decode()}]} for i, p in enumerate(pages)],
        "options": {"reading_mode": "vision"}})
    provider = config(fresh, rate_limit=RateLimitConfig(rpm=1000), context_window=200_000,
                      max_completion_tokens=8_000)
    args = RaygradeArgs(api=ApiConfig(auth="disabled"), provider=provider,
                        batcher=BatcherConfig(max_students_per_request=2),
                        store=StoreConfig(), namespace=f"rg-ant-{uuid.uuid4().hex[:8]}")
    serve.run(build_app(args), name="claude", route_prefix="/claude")
    try:
        client = Client(f"{serve_url}/claude", timeout_s=60)
        st = client.wait(client.submit(job).id, timeout_s=120, poll_s=0.2, progress=False)
        res = client.results(st.id)
        assert st.state.value == "succeeded", [(e.type, e.message) for e in res.errors]
        assert len(res.results) == 6 and {r.model for r in res.results} == {"claude-fake"}
        ok = [r for r in fresh.log if r.status == 200]
        assert len(ok) == 3, "two students a request"
        assert sum(r.cache_read > 0 for r in ok) >= 2, "every request after the first reads the cached prefix"
        per_page = [claude_image_tokens(*image_size(p)) for p in pages]
        assert sorted(r.input_tokens for r in ok)[0] > min(per_page) * 2, "two page images each, by Claude's rule"
    finally:
        serve.delete("claude")
