"""Gemini through the Gemini API: raygrade's adapter and the official ``google-genai`` SDK against
the fake Gemini API over real HTTP on 127.0.0.1 (JSON-schema output, inline page images, implicit
caching, ``RESOURCE_EXHAUSTED`` with its wait only in the body, the per-day quota), and a job with
page images graded end to end through the Serve app with ``kind: gemini``."""

import asyncio
import base64
import datetime as dt
import io
import json
import time
import uuid

import pytest

from raygrade.batch import GradeBatch
from raygrade.config import ApiConfig, BatcherConfig, ProviderConfig, RateLimitConfig, RaygradeArgs
from raygrade.config.rate_limit import quota_zone
from raygrade.errors import ProviderStatusError, QuotaExhaustedError, RateLimitedError
from raygrade.graders import build_batch_grader
from raygrade.prompts import StudentWork
from raygrade.protocol import Question, TextPage
from raygrade.providers.base import ChatRequest
from raygrade.providers.gemini import GeminiProvider, next_quota_day, quota_details
from raygrade.ratelimit.limiter import RateLimiter
from raygrade.testing.fake_gemini import PER_DAY_QUOTA, FakeGeminiServer, day_in, zone_with_midnight_at
from raygrade.tokens import gemini_image_tokens

SCHEMA = {"type": "object", "properties": {"s1": {"type": "object", "properties": {"q1": {
    "type": "object", "properties": {"feedback": {"type": "string"},
                                     "score": {"type": "number", "minimum": 0, "maximum": 2},
                                     "confidence": {"type": "number"}},
    "required": ["feedback", "score", "confidence"]}}, "required": ["q1"]}}, "required": ["s1"]}
LONG_SYSTEM = "Grade carefully. " + "Rubric line: award a point for each correct step. " * 120


def png(w=1000, h=900) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), "white").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def request() -> ChatRequest:
    user = [{"type": "text", "text": "# Student s1\n[Page 1]"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png()}"}}]
    return ChatRequest([{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": user}],
                       max_tokens=300, temperature=0, json_schema=SCHEMA)


def config(srv, **kw) -> ProviderConfig:
    return ProviderConfig(name="gemini", kind="gemini", base_url=srv.base_url, api_key_env="RAYGRADE_FAKE_KEY",
                          model="gemini-fake", image_token_rule="gemini", **kw)


@pytest.fixture(scope="module")
def gem():
    srv = FakeGeminiServer(api_key="sk-test").start()
    yield srv
    srv.stop()


@pytest.fixture
def fresh(gem):
    gem.rpm = gem.input_tpm = gem.rpd = None
    gem.reset()
    yield gem
    gem.reset()


def chat(srv, req=None, **kw):
    async def go():
        p = GeminiProvider(config(srv, **kw))
        try:
            return await p.chat(req or request())
        finally:
            await p.close()
    return asyncio.run(go())


def test_retry_info_and_quota_failure_are_read_from_the_body():
    delay, quotas = quota_details([
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaId": "A-PerDay"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "45.8s"}, "junk"])
    assert delay == 45.8 and quotas == ["A-PerDay"]
    assert quota_details(None) == (None, [])
    # midnight Pacific: 07:59 UTC on 3 Dec 2026 is 23:59 PST on 2 Dec
    assert next_quota_day(dt.datetime(2026, 12, 3, 7, 59, tzinfo=dt.UTC)).isoformat() == "2026-12-03T00:00:00-08:00"
    assert next_quota_day(dt.datetime(2026, 7, 1, 12, 0, tzinfo=dt.UTC)).isoformat() == "2026-07-02T00:00:00-07:00"


def test_json_output_images_usage_and_implicit_cache(fresh):
    first = chat(fresh)
    assert json.loads(first.content)["s1"]["q1"]["score"] == 1.0 and first.finish_reason == "stop"
    assert first.model == "gemini-fake" and first.cached_tokens == 0
    assert fresh.log[0].prompt_tokens > gemini_image_tokens(1000, 900) == 1032, "the page by Gemini's tile rule"
    second = chat(fresh)
    assert second.cached_tokens == fresh.log[1].cached_tokens > 1024, "the system instruction is cached"
    assert second.usage.prompt_tokens == first.usage.prompt_tokens, "cached tokens are part of the prompt count"


def test_a_per_minute_429_waits_the_body_delay_and_a_per_day_429_is_spent_until_midnight_pacific(fresh):
    fresh.script[:] = ["rate_limited"]
    with pytest.raises(RateLimitedError) as minute:
        chat(fresh)
    assert minute.value.retryable and minute.value.retry_after_s == pytest.approx(1.0)
    assert "PerMinute" in minute.value.message
    fresh.rpd = 1
    chat(fresh)
    with pytest.raises(QuotaExhaustedError) as day:
        chat(fresh)
    assert not day.value.retryable and day.value.retry_after_s is None and day.value.error_type == "quota_exhausted"
    assert next_quota_day().isoformat() in day.value.message and day.value.code == \
        "GenerateRequestsPerDayPerProjectPerModel"
    # A provider whose day starts elsewhere (rate_limit.rpd_reset_zone): the reset it names is midnight there.
    with pytest.raises(QuotaExhaustedError) as tokyo:
        chat(fresh, rate_limit=RateLimitConfig(rpd_reset_zone="Asia/Tokyo"))
    reset = next_quota_day(zone=quota_zone("Asia/Tokyo"))
    assert tokyo.value.reset_at == reset.timestamp() and reset.isoformat().endswith("T00:00:00+09:00")


def test_unavailable_bad_key_and_blocked_answers(fresh, monkeypatch):
    fresh.script[:] = ["unavailable"]
    with pytest.raises(ProviderStatusError) as e503:
        chat(fresh)
    assert e503.value.provider_status == 503 and e503.value.retryable and e503.value.code == "UNAVAILABLE"
    fresh.script[:] = ["safety"]
    blocked = chat(fresh)
    assert blocked.content is None and "SAFETY" in blocked.refusal
    monkeypatch.setenv("RAYGRADE_FAKE_KEY", "sk-wrong")
    with pytest.raises(ProviderStatusError) as bad:
        chat(fresh)
    assert bad.value.provider_status == 400 and not bad.value.retryable and "sk-wrong" not in bad.value.message


def test_a_page_image_job_through_the_serve_app_on_gemini(serve_url, fresh):
    from ray import serve

    from raygrade.app import build_app
    from raygrade.cli import Client
    from raygrade.datasets.render import render_pages
    from raygrade.protocol import GradingJob

    examples = [{"answer": f"Example answer {i}: a router forwards packets by destination address.",
                 "score": i % 3} for i in range(40)]
    pages = [render_pages("A router forwards packets.", seed=i)[0] for i in range(4)]
    job = GradingJob.model_validate({
        "assessment": {"questions": [{"id": "q1", "prompt": "What does a router do?", "max_score": 2,
                                      "reference_answer": "It forwards packets between networks.",
                                      "examples": examples}]},
        "submissions": [{"student_id": f"st{i}", "pages": [{"type": "image", "data": base64.b64encode(p).decode()}]}
                        for i, p in enumerate(pages)],
        "options": {"reading_mode": "vision"}})
    provider = config(fresh, rate_limit=RateLimitConfig(rpm=1000), context_window=1_000_000,
                      max_completion_tokens=8_000)
    args = RaygradeArgs(api=ApiConfig(auth="disabled"), provider=provider,
                        batcher=BatcherConfig(max_students_per_request=2), namespace=f"rg-gem-{uuid.uuid4().hex[:8]}")
    serve.run(build_app(args), name="gemini", route_prefix="/gemini")
    try:
        client = Client(f"{serve_url}/gemini", timeout_s=60)
        st = client.wait(client.submit(job).id, timeout_s=120, poll_s=0.2, progress=False)
        res = client.results(st.id)
        assert st.state.value == "succeeded", [(e.type, e.message) for e in res.errors]
        assert len(res.results) == 4 and {r.model for r in res.results} == {"gemini-fake"}
        ok = [r for r in fresh.log if r.status == 200]
        assert len(ok) == 2 and ok[1].cached_tokens > 0, "two students a request; the second reads the cache"
    finally:
        serve.delete("gemini")


def text_batch(batch_id: str) -> GradeBatch:
    q = Question(id="q1", prompt="What does a router do?", max_score=2, reference_answer="It forwards packets.")
    work = StudentWork(student_id="st1", alias="s1", pages=[TextPage(text="It forwards packets.")],
                       page_indices=[0], question_ids=["q1"])
    return GradeBatch(batch_id=batch_id, job_id="j1", questions=[q], students=[work], prompt_tokens_estimate=200,
                      max_tokens=300)


def test_a_spent_day_sends_nothing_more_until_the_reset_and_fails_items_as_quota_exhausted(fresh, monkeypatch):
    """The provider allows 1 request a day and raygrade is not told (no ``rpd``): its per-day
    refusal spends the day at the limiter, so the next batch is refused there without a request;
    after midnight Pacific the key sends again."""
    day, wall = ["2026-12-03"], [time.time()]
    monkeypatch.setattr(fresh, "day_reset", lambda: day[0])
    fresh.rpd = 1
    fresh.reset()

    async def grade_all(g, ids):
        return [await g.grade(text_batch(b)) for b in ids]

    async def go():
        lim, cfg = RateLimiter(wall=lambda: wall[0]), config(fresh, rate_limit_patience_s=60)
        lim.configure(cfg.bucket_key, cfg.rate_limit)
        provider = GeminiProvider(cfg)
        try:
            g = build_batch_grader(cfg, lim, chat_provider=provider)
            before = await grade_all(g, ["b1", "b2", "b3"])
            key_snapshot = next(iter(lim.snapshot().values()))
            wall[0], day[0] = next_quota_day().timestamp() + 1, "2026-12-04"  # past midnight Pacific
            return before, key_snapshot, await grade_all(g, ["b4"])
        finally:
            await provider.close()

    (b1, b2, b3), snap, [b4] = asyncio.run(go())
    assert len(b1.results) == 1 and not b1.errors
    [provider_refusal], [limiter_refusal] = b2.errors, b3.errors
    assert provider_refusal.type == limiter_refusal.type == "quota_exhausted"
    assert next_quota_day().isoformat() in provider_refusal.message
    assert "the provider refused it" in limiter_refusal.message and "patience of 60 s" in limiter_refusal.message
    assert [r.status for r in fresh.log] == [200, 429, 200], "b3 was never sent; b4 went after the reset"
    assert snap["day_spent_until"] == next_quota_day().isoformat() and snap["quota_refused"] == 1
    assert len(b4.results) == 1 and not b4.errors


def test_a_providers_daily_refusal_is_tried_again_after_a_reset_within_the_patience(fresh, monkeypatch):
    """The provider's day ends 4 s from now (``rate_limit.rpd_reset_zone``) and allows 1 request;
    raygrade is not told. The second batch's refusal spends the day at the limiter; the batch
    waits for the reset (within its patience) and is graded then: no item is lost."""
    zone = zone_with_midnight_at(time.time() + 4)  # room for b1 on a loaded machine
    monkeypatch.setattr(fresh, "day_reset", day_in(zone))
    fresh.rpd = 1
    fresh.reset()

    async def go():
        lim = RateLimiter()
        cfg = config(fresh, rate_limit_patience_s=60, rate_limit=RateLimitConfig(rpd_reset_zone=zone))
        lim.configure(cfg.bucket_key, cfg.rate_limit)
        provider = GeminiProvider(cfg)
        try:
            g = build_batch_grader(cfg, lim, chat_provider=provider)
            return [await g.grade(text_batch(b)) for b in ("b1", "b2")], next(iter(lim.snapshot().values()))
        finally:
            await provider.close()

    (b1, b2), snap = asyncio.run(go())
    assert len(b1.results) == len(b2.results) == 1 and not b1.errors and not b2.errors
    assert [r.status for r in fresh.log] == [200, 429, 200] and fresh.log[1].quota == PER_DAY_QUOTA
    assert fresh.log[2].admitted - fresh.log[1].admitted < 5, "tried again at the reset, not later"
    assert snap["quota_refused"] == 0 and snap["day_spent_until"] is None
