"""The shared rate limiter: windows, settlement, headers, 429s, priorities, fairness,
breaker and restarts, on a virtual clock (no Ray, no waiting)."""

import asyncio
import math

import pytest
from support.clock import VirtualClock

from raygrade.config import RateLimitConfig
from raygrade.config.rate_limit import STRICTER
from raygrade.errors import CircuitOpenError
from raygrade.ratelimit.breaker import CircuitBreaker
from raygrade.ratelimit.limiter import RateLimiter, Settlement
from raygrade.ratelimit.offers import OFFER_TTL_S
from raygrade.ratelimit.state import ESTIMATE_MARGIN
from raygrade.ratelimit.window import SlidingWindow, parse_duration, parse_rate_limit_headers

W = 61.0  # 60 s + the default 1 s margin


def run(coro_fn):
    return asyncio.run(coro_fn())


def limiter(clock, restarted=False, **limits):
    """A limiter of one key ``k``; smooth admission off unless ``burst_s`` is given (these tests
    are about the windows; the pacer's own are in test_pacer.py)."""
    lim = RateLimiter(clock=clock, sleep=clock.sleep, restarted=restarted)
    lim.configure("k", RateLimitConfig(**{"burst_s": None, **limits}))
    return lim


# -- window and header parsing ------------------------------------------------------------
def test_sliding_window_admits_at_most_the_limit_in_any_window():
    w = SlidingWindow(100, 60)
    assert w.wait_for(60, 0) == 0
    w.charge(60, 0)
    w.charge(30, 10)
    assert w.wait_for(20, 20) == pytest.approx(40)  # needs the t=0 charge gone: at 60
    assert w.wait_for(10, 20) == 0
    assert w.used(60) == 30 and w.used(70) == 0
    assert w.wait_for(500, 70) == 0, "an oversized request goes once the window is empty"


def test_window_adjust_charge_until_and_used_since():
    w = SlidingWindow(100, 60)
    c = w.charge(50, 0)
    w.adjust(c, 20, 1)
    assert w.used(1) == 20
    w.charge_until(30, 1, 11)
    assert w.used(5) == 50 and w.used(11) == 20
    assert w.used_since(59, 61) == 20, "expired at 60 but was live at 59"
    assert w.used_since(60.5, 61) == 0


def test_prefill_releases_capacity_at_the_steady_rate():
    w = SlidingWindow(600, 60)
    w.prefill(0)
    assert w.used(0) == pytest.approx(600)
    assert w.used(30) == pytest.approx(300)
    assert w.used(60) == pytest.approx(0)


@pytest.mark.parametrize("text,seconds", [("1s", 1), ("6m0s", 360), ("20ms", 0.02), ("1h2m3.5s", 3723.5),
                                          ("0.5", 0.5), ("", None), ("soon", None), ("5x", None)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_parse_rate_limit_headers():
    h = parse_rate_limit_headers({"X-RateLimit-Limit-Tokens": "30000", "x-ratelimit-remaining-tokens": "29000",
                                  "x-ratelimit-reset-tokens": "2s", "x-request-id": "r"})
    assert h["tokens"].limit == 30000 and h["tokens"].remaining == 29000 and h["tokens"].reset_s == 2
    assert "requests" not in h


# -- reservation and settlement -----------------------------------------------------------
def test_reserve_then_settle_refunds_unused_max_tokens():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, tpm=1000)
        r = await lim.acquire("k", 600)
        assert lim.snapshot()["k"]["tokens_available"] == 400
        await lim.settle(r, Settlement(150))
        assert lim.snapshot()["k"]["tokens_available"] == 850
        await lim.settle(r, Settlement(10))  # settling twice changes nothing
        assert lim.snapshot()["k"]["tokens_available"] == 850
        failed = await lim.acquire("k", 300)
        await lim.settle(failed, Settlement(None, outcome="client_error"))
        assert lim.snapshot()["k"]["tokens_available"] == 550, "a failed call keeps its estimate"
    run(main)


def test_no_refund_when_the_provider_keeps_the_estimate():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, tpm=1000, refund_unused=False)
        await lim.settle(await lim.acquire("k", 600), Settlement(100))
        assert lim.snapshot()["k"]["tokens_available"] == 400
    run(main)


def test_waiter_is_admitted_exactly_when_the_window_frees():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, rpm=2, tpm=1000)
        await lim.acquire("k", 500)
        await lim.acquire("k", 400)
        third = asyncio.create_task(lim.acquire("k", 10))  # rpm=2 binds
        await clock.advance(W - 0.01)
        assert not third.done()
        await clock.advance(0.02)
        assert third.done() and third.result().waited_s == pytest.approx(W, abs=0.02)
    run(main)


def test_unknown_key_and_bad_arguments():
    async def main():
        lim = RateLimiter()
        with pytest.raises(KeyError):
            await lim.acquire("nope", 1)
        lim.configure("k", rpm=1)
        with pytest.raises(ValueError):
            await lim.acquire("k", -1)
        with pytest.raises(ValueError):
            await lim.acquire("k", 1, priority="urgent")
    run(main)


# -- who sets a key's limits ----------------------------------------------------------------
def test_callers_disagreeing_on_limits_never_reset_the_key():
    """Regression: two callers whose configs differed only in ``window_margin_s`` each reset the
    key's windows, and 3,600 tokens were admitted at one instant under ``tpm=1000``."""
    async def main():
        clock = VirtualClock()
        lim = RateLimiter(clock=clock, sleep=clock.sleep)
        a, b = RateLimitConfig(tpm=1000), RateLimitConfig(tpm=1000, window_margin_s=2.0)
        granted = []
        for i in range(6):
            lim.configure("k", a if i % 2 == 0 else b)
            granted.append(asyncio.create_task(lim.acquire("k", 600)))
            await clock.settle()
        assert sum(t.done() for t in granted) == 1, "one 600-token call fits 1000 per window, not six"
        assert lim.snapshot()["k"]["admitted_tokens"] == 600
        await clock.advance(62.0 + 0.01)  # the stricter margin (2 s) is in force
        assert sum(t.done() for t in granted) == 2
        for t in granted:
            t.cancel()
    run(main)


def test_the_stricter_of_each_field_is_kept_whoever_configures_last(caplog):
    async def main():
        clock = VirtualClock()
        lim = RateLimiter(clock=clock, sleep=clock.sleep)
        lim.configure("k", RateLimitConfig(tpm=1000, rpm=None, default_backoff_s=5))
        with caplog.at_level("WARNING", logger="raygrade.ratelimit.offers"):
            lim.configure("k", RateLimitConfig(tpm=5000, rpm=10, default_backoff_s=1))
            lim.configure("k", RateLimitConfig(tpm=5000, rpm=10, default_backoff_s=1))  # known: no second warning
        snap = lim.snapshot()["k"]
        assert (snap["tpm"], snap["rpm"]) == (1000, 10)
        assert [r.getMessage() for r in caplog.records] == [
            "callers of k configure different rate limits (default_backoff_s, rpm, tpm); keeping the stricter of each"]
        r = await lim.acquire("k", 100)
        await lim.settle(r, Settlement(100, outcome="rate_limited"))
        assert snap["paused_for_s"] == 0 and lim.snapshot()["k"]["paused_for_s"] == 5, "the longer backoff"
    run(main)


def test_a_callers_limits_stop_binding_once_it_is_silent():
    async def main():
        clock = VirtualClock()
        lim = RateLimiter(clock=clock, sleep=clock.sleep)
        loose, strict = RateLimitConfig(tpm=5000), RateLimitConfig(tpm=1000)
        lim.configure("k", strict)
        lim.configure("k", loose)
        assert lim.snapshot()["k"]["tpm"] == 1000
        await clock.advance(OFFER_TTL_S - 1)
        lim.configure("k", loose)
        assert lim.snapshot()["k"]["tpm"] == 1000, "the strict caller spoke within the TTL"
        await clock.advance(2)
        lim.configure("k", loose)
        assert lim.snapshot()["k"]["tpm"] == 5000
    run(main)


def test_a_stricter_window_keeps_what_was_charged():
    async def main():
        clock = VirtualClock()
        lim = RateLimiter(clock=clock, sleep=clock.sleep)
        lim.configure("k", RateLimitConfig(tpm=600, window_margin_s=0))  # 600 per 60 s
        await lim.acquire("k", 600)
        lim.configure("k", RateLimitConfig(tpm=600, window_s=6, window_margin_s=0))  # 60 per 6 s
        t = asyncio.create_task(lim.acquire("k", 10))
        await clock.advance(59.9)
        assert not t.done(), "the 600 charged under the 60-s window stay until it ends"
        await clock.advance(0.2)
        assert t.done()
        assert lim.snapshot()["k"]["tokens_available"] == 50
    run(main)


def test_a_longer_window_extends_what_was_charged():
    w = SlidingWindow(100, 10)
    w.charge(100, 0)
    w.resize(60, 5)
    assert w.used(59) == 100 and w.used(60) == 0
    w.charge(100, 60)  # frees at 120
    w.resize(10, 61)
    w.charge(10, 61)  # frees at 71
    assert w.used(70) == 110 and w.used(72) == 100, "a newer, shorter-lived entry is not stuck behind an older one"
    assert w.used(120) == 0
    with pytest.raises(ValueError):
        w.resize(0, 60)


def test_every_rate_limit_field_has_a_stricter_rule():
    assert set(STRICTER) == set(RateLimitConfig.model_fields)
    a = RateLimitConfig(rpm=10, refund_unused=False, max_concurrent_tokens=100)
    b = RateLimitConfig(tpm=99, window_s=10, rejected_requests_count=False, max_concurrent_tokens=50)
    merged = a.stricter(b)
    assert merged == b.stricter(a)
    assert (merged.rpm, merged.tpm, merged.window_s, merged.refund_unused, merged.rejected_requests_count,
            merged.max_concurrent_tokens) == (10, 99, 10, False, True, 50)
    assert a.stricter(a) is a


# -- separate input and output budgets (Anthropic's rule) ------------------------------------
def test_output_tokens_bind_apart_from_input_and_settle_to_the_real_output():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, itpm=10_000, otpm=500)
        a = await lim.acquire("k", 900, prompt_tokens=600, output_tokens=300)
        snap = lim.snapshot()["k"]
        assert (snap["input_tokens_available"], snap["output_tokens_available"]) == (10_000 - 600, 200)
        assert snap["tokens_available"] is None, "no tpm: nothing charges prompt + max_tokens"
        b = asyncio.create_task(lim.acquire("k", 900, prompt_tokens=600, output_tokens=300))
        await clock.settle()
        assert not b.done(), "the output budget binds while input has room"
        await lim.settle(a, Settlement(650, completion_tokens=50))  # the answer used 50 of its 300
        await clock.settle()
        assert b.done() and lim.snapshot()["k"]["output_tokens_available"] == 500 - 50 - 300
    run(main)


def test_cache_reads_are_free_of_the_input_budget():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, itpm=1_000, otpm=1_000)
        r = await lim.acquire("k", 900, prompt_tokens=800, output_tokens=100)
        assert lim.snapshot()["k"]["input_tokens_available"] == 200
        await lim.settle(r, Settlement(850, completion_tokens=50, cached_tokens=700))
        snap = lim.snapshot()["k"]
        assert snap["input_tokens_available"] == 1_000 - 100, "800 input, 700 of them read from the cache"
        assert snap["output_tokens_available"] == 950
    run(main)


def test_input_and_output_limits_are_learned_from_their_headers():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, rpm=100)
        r = await lim.acquire("k", 900, prompt_tokens=600, output_tokens=300)
        await lim.settle(r, Settlement(650, completion_tokens=50, headers={
            "x-ratelimit-limit-input-tokens": "40000", "x-ratelimit-remaining-input-tokens": "39000",
            "x-ratelimit-limit-output-tokens": "8000", "x-ratelimit-remaining-output-tokens": "8000"}))
        snap = lim.snapshot()["k"]
        assert (snap["itpm"], snap["otpm"], snap["tpm"]) == (40_000, 8_000, None)
        assert snap["header_correction_tokens"] == 0
        await lim.acquire("k", 900, prompt_tokens=600, output_tokens=300)
        assert lim.snapshot()["k"]["output_tokens_available"] == 8_000 - 300
    run(main)


# -- headers ------------------------------------------------------------------------------
def test_learns_a_lower_real_limit_and_an_unconfigured_one():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, tpm=100_000)
        r = await lim.acquire("k", 1000)
        await lim.settle(r, Settlement(1000, headers={"x-ratelimit-limit-tokens": "30000",
                                           "x-ratelimit-remaining-tokens": "29000",
                                           "x-ratelimit-limit-requests": "500",
                                           "x-ratelimit-remaining-requests": "499"}))
        snap = lim.snapshot()["k"]
        assert snap["tpm"] == 30_000 and snap["rpm"] == 500
        assert snap["tokens_available"] == 29_000
        assert snap["requests_available"] == 499, "the call made before the limit was known is charged too"
    run(main)


def test_configured_limit_below_the_real_one_is_kept():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, tpm=10_000)
        r = await lim.acquire("k", 1000)
        await lim.settle(r, Settlement(1000, headers={"x-ratelimit-limit-tokens": "30000",
                                           "x-ratelimit-remaining-tokens": "29000"}))
        assert lim.snapshot()["k"]["tpm"] == 10_000 and lim.snapshot()["k"]["tokens_available"] == 9_000
    run(main)


def test_usage_the_limiter_did_not_see_is_charged_until_the_reset():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, tpm=10_000)
        r = await lim.acquire("k", 1000)
        # Another client of the same organisation used 5000 more.
        await lim.settle(r, Settlement(1000, headers={"x-ratelimit-limit-tokens": "10000",
                                           "x-ratelimit-remaining-tokens": "4000",
                                           "x-ratelimit-reset-tokens": "20s"}))
        snap = lim.snapshot()["k"]
        assert snap["tokens_available"] == pytest.approx(4000) and snap["header_corrections"] == 1
        await clock.advance(20)
        assert lim.snapshot()["k"]["tokens_available"] == pytest.approx(9000)
    run(main)


def test_headers_do_not_charge_twice_what_unlearned_calls_under_reserved():
    """While calls admitted before the provider's count was known are settling, the provider's
    remaining tokens are lower by their under-estimates; settlement corrects those, so no header
    correction is added on top (it would hold a window's worth twice)."""
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, tpm=100_000)
        calls = [await lim.acquire("k", 2_000, prompt_tokens=1_500) for _ in range(3)]  # reserved at 1x
        for r in calls:  # the provider counted 4x: its remaining is 3 x 4_500 lower than ours
            await lim.settle(r, Settlement(6_000 + 100, prompt_tokens=6_000, headers={
                "x-ratelimit-limit-tokens": "100000", "x-ratelimit-remaining-tokens": str(100_000 - 3 * 8_000),
                "x-ratelimit-reset-tokens": "60s"}))
        snap = lim.snapshot()["k"]
        assert snap["header_corrections"] == 0
        assert snap["tokens_available"] == pytest.approx(100_000 - 3 * 6_100)

    run(main)


def test_stale_headers_cause_no_correction():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, tpm=10_000)
        old = await lim.acquire("k", 3000)
        await clock.advance(30)
        r = await lim.acquire("k", 1000)
        await clock.advance(W - 30 + 1)  # `old` expired here while `r` was in flight...
        # ...but the provider answered `r` before that, still counting `old`.
        await lim.settle(r, Settlement(1000, headers={"x-ratelimit-limit-tokens": "10000",
                                           "x-ratelimit-remaining-tokens": "6000"}))
        assert lim.snapshot()["k"]["header_corrections"] == 0
        assert old.id != r.id
    run(main)


async def learned(clock, tpm=10_000):
    """A limiter whose key learned the provider's count (3 calls counted as estimated), a window
    later: its window is empty and no call is a learning probe."""
    lim = limiter(clock, tpm=tpm)
    for _ in range(3):
        r = await lim.acquire("k", 1_000, prompt_tokens=600)
        await lim.settle(r, Settlement(700, prompt_tokens=600))
    await clock.advance(W)
    return lim


def tok_headers(remaining, reset="60s", limit=10_000):
    return {"x-ratelimit-limit-tokens": str(limit), "x-ratelimit-remaining-tokens": str(remaining),
            "x-ratelimit-reset-tokens": reset}


def test_a_calls_own_up_front_charge_read_in_its_headers_is_no_correction():
    """The provider charged the call 700 + 400 max_tokens when it arrived (its count, 100 above the
    estimate) and says so in that call's headers; by the settlement it has refunded the unused part,
    and the settlement charges the provider's count: nothing is missing (before: 100 tokens held
    for a whole window, on every under-estimated call)."""
    async def main():
        clock = VirtualClock()
        lim = await learned(clock)
        r = await lim.acquire("k", 1_000, prompt_tokens=600)
        await lim.settle(r, Settlement(700 + 50, prompt_tokens=700, headers=tok_headers(10_000 - 1_100)))
        snap = lim.snapshot()["k"]
        assert snap["header_corrections"] == 0 and snap["tokens_available"] == pytest.approx(10_000 - 750)
    run(main)


def test_a_fresher_header_replaces_the_correction_and_a_stale_one_cannot_lower_it():
    async def main():
        clock = VirtualClock()
        lim = await learned(clock)
        early = await lim.acquire("k", 1_000, prompt_tokens=600)  # in flight across what follows
        await clock.advance(1)
        r = await lim.acquire("k", 1_000, prompt_tokens=600)
        # Another client used 3,000: the provider shows ours (2 x 1,000) + 3,000.
        await lim.settle(r, Settlement(700, prompt_tokens=600, headers=tok_headers(10_000 - 5_000)))
        assert lim.snapshot()["k"]["header_correction_tokens"] == pytest.approx(3_000)
        # A reading from a call admitted before that correction says less: it proves nothing.
        await lim.settle(early, Settlement(700, prompt_tokens=600, headers=tok_headers(10_000 - 1_700)))
        assert lim.snapshot()["k"]["header_correction_tokens"] == pytest.approx(3_000)
        await clock.advance(5)
        fresh = await lim.acquire("k", 1_000, prompt_tokens=600)  # the other client's use has gone
        await lim.settle(fresh, Settlement(700, prompt_tokens=600, headers=tok_headers(10_000 - 2_400)))
        snap = lim.snapshot()["k"]
        assert snap["header_correction_tokens"] == 0 and snap["header_corrections"] == 1
        assert snap["tokens_available"] == pytest.approx(10_000 - 3 * 700)
    run(main)


def test_a_further_gap_raises_the_correction_until_the_new_reset():
    async def main():
        clock = VirtualClock()
        lim = await learned(clock)
        a = await lim.acquire("k", 1_000, prompt_tokens=600)
        await lim.settle(a, Settlement(700, prompt_tokens=600,
                                       headers=tok_headers(10_000 - 1_000 - 1_000, reset="10s")))
        b = await lim.acquire("k", 1_000, prompt_tokens=600)
        await clock.advance(5)
        await lim.settle(b, Settlement(700, prompt_tokens=600,
                                       headers=tok_headers(10_000 - 2_000 - 2_500, reset="20s")))
        assert lim.snapshot()["k"]["header_correction_tokens"] == pytest.approx(2_500)
        await clock.advance(10)  # past the first reset, before the second
        assert lim.snapshot()["k"]["header_correction_tokens"] == pytest.approx(2_500)
        await clock.advance(11)
        assert lim.snapshot()["k"]["header_correction_tokens"] == 0
    run(main)


def test_a_correction_shrinks_by_what_calls_in_flight_turn_out_to_have_under_reserved():
    """The gap a header shows can be calls still in flight that the provider counts higher than
    their reservations; when they settle (charged at its count), that part of the correction goes."""
    async def main():
        clock = VirtualClock()
        lim = await learned(clock)
        x = await lim.acquire("k", 1_000, prompt_tokens=600)   # the provider counts its prompt 1,400
        y = await lim.acquire("k", 1_000, prompt_tokens=600)
        await lim.settle(y, Settlement(700, prompt_tokens=600, headers=tok_headers(10_000 - 1_000 - 1_800)))
        assert lim.snapshot()["k"]["header_correction_tokens"] == pytest.approx(800)
        await lim.settle(x, Settlement(1_500, prompt_tokens=1_400))
        snap = lim.snapshot()["k"]
        assert snap["header_correction_tokens"] == 0
        assert snap["tokens_available"] == pytest.approx(10_000 - 700 - 1_500)
    run(main)


# -- 429s ---------------------------------------------------------------------------------
def test_429_pauses_every_caller_for_retry_after():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, tpm=1_000_000)
        r = await lim.acquire("k", 10)
        await lim.settle(r, Settlement(None, outcome="rate_limited", retry_after_s=5))
        others = [asyncio.create_task(lim.acquire("k", 10, job=f"j{i}")) for i in range(3)]
        await clock.advance(4.9)
        assert not any(t.done() for t in others)
        await clock.advance(0.2)
        assert all(t.done() for t in others)
        assert lim.snapshot()["k"]["rate_limited"] == 1
    run(main)


def test_429_without_retry_after_uses_the_default_backoff():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, tpm=1_000_000, default_backoff_s=2)
        await lim.settle(await lim.acquire("k", 10), Settlement(None, outcome="rate_limited"))
        t = asyncio.create_task(lim.acquire("k", 10))
        await clock.advance(1.9)
        assert not t.done()
        await clock.advance(0.2)
        assert t.done()
    run(main)


# -- priority and fairness ----------------------------------------------------------------
def test_interactive_goes_ahead_of_bulk_and_bulk_fills_the_rest():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, rpm=2)
        await lim.acquire("k", 1)
        await lim.acquire("k", 1)  # window full until t0 + W
        order = []

        async def call(name, prio):
            await lim.acquire("k", 1, priority=prio, job=name)
            order.append(name)

        tasks = [asyncio.create_task(call("bulk-1", "bulk")), asyncio.create_task(call("bulk-2", "bulk"))]
        await clock.settle()
        tasks += [asyncio.create_task(call("web-1", "interactive")),
                  asyncio.create_task(call("web-2", "interactive"))]
        await clock.advance(W)
        assert order == ["web-1", "web-2"], "interactive queued later still goes first"
        await clock.advance(W)
        assert order == ["web-1", "web-2", "bulk-1", "bulk-2"], "bulk gets capacity nobody else wants"
        await asyncio.gather(*tasks)
    run(main)


def test_jobs_of_one_class_share_fairly():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, rpm=1)
        await lim.acquire("k", 1)
        order = []

        async def call(job, tokens):
            await lim.acquire("k", tokens, job=job)
            order.append(job)

        tasks = [asyncio.create_task(call("A", 100)) for _ in range(6)]
        await clock.settle()
        tasks += [asyncio.create_task(call("B", 100)) for _ in range(3)]
        for _ in range(9):
            await clock.advance(W)
        assert order[:6] == ["A", "B", "A", "B", "A", "B"], order
        await asyncio.gather(*tasks)
    run(main)


def test_tenants_share_first_then_their_jobs():
    """School A queues three jobs, school B one: B gets half the grants (not a quarter), and A's
    half rotates among its jobs."""
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, rpm=1)
        await lim.acquire("k", 1)
        order = []

        async def call(tenant, job):
            await lim.acquire("k", 100, job=job, tenant=tenant)
            order.append(f"{tenant}/{job}")

        tasks = [asyncio.create_task(call("A", j)) for j in ("a1", "a2", "a3") for _ in range(4)]
        await clock.settle()
        tasks += [asyncio.create_task(call("B", "b1")) for _ in range(6)]
        for _ in range(12):
            await clock.advance(W)
        first = order[:12]
        assert first.count("B/b1") == 6, order
        a_jobs = [o for o in first if o.startswith("A/")]
        assert sorted(a_jobs) == ["A/a1", "A/a1", "A/a2", "A/a2", "A/a3", "A/a3"], order
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    run(main)


def test_a_cancelled_waiter_leaves_the_queue():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, rpm=1)
        await lim.acquire("k", 1)
        first = asyncio.create_task(lim.acquire("k", 1))
        second = asyncio.create_task(lim.acquire("k", 1))
        await clock.settle()
        first.cancel()
        await clock.advance(W)
        assert first.cancelled() and second.done()
    run(main)


# -- circuit breaker ----------------------------------------------------------------------
def test_breaker_opens_probes_and_closes():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, tpm=1_000_000, breaker_failure_threshold=3, breaker_cooldown_s=10)
        for _ in range(3):
            await lim.settle(await lim.acquire("k", 1), Settlement(None, outcome="failure"))
        assert lim.snapshot()["k"]["breaker"] == "open"
        with pytest.raises(CircuitOpenError) as e:
            await lim.acquire("k", 1)
        assert e.value.retry_after_s == pytest.approx(10)
        await clock.advance(10)
        probe = await lim.acquire("k", 1)
        assert probe.probe
        queued = asyncio.create_task(lim.acquire("k", 1))
        await clock.advance(1)
        assert not queued.done(), "one probe at a time while half-open"
        await lim.settle(probe, Settlement(None, outcome="failure"))  # failed probe: open again, cooldown doubles
        await clock.settle()
        with pytest.raises(CircuitOpenError):
            await queued
        await clock.advance(19.9)
        with pytest.raises(CircuitOpenError):
            await lim.acquire("k", 1)
        await clock.advance(0.2)
        probe = await lim.acquire("k", 1)
        await lim.settle(probe, Settlement(5))
        assert lim.snapshot()["k"]["breaker"] == "closed"
        assert not (await lim.acquire("k", 1)).probe
    run(main)


def test_breaker_ignores_429s_and_client_errors_and_resets_on_success():
    b = CircuitBreaker(failure_threshold=2, cooldown_s=5)
    b.on_failure(0, False)
    b.on_success(False)
    b.on_failure(1, False)
    assert b.state == "closed"
    b.on_failure(2, False)
    assert b.state == "open" and b.retry_in(3) == pytest.approx(4)
    assert b.retry_in(7) == 0 and b.state == "half_open"


def test_rate_limited_outcome_does_not_open_the_breaker():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, tpm=1_000_000, breaker_failure_threshold=1)
        await lim.settle(await lim.acquire("k", 1), Settlement(None, outcome="rate_limited", retry_after_s=0))
        await lim.settle(await lim.acquire("k", 1), Settlement(None, outcome="client_error"))
        assert lim.snapshot()["k"]["breaker"] == "closed"
    run(main)


# -- restart ------------------------------------------------------------------------------
def test_a_restarted_limiter_does_not_burst():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, restarted=True, tpm=6000)  # 100 tokens/s steady
        admitted = []

        async def worker():
            while clock.now < 1000 + W:
                await lim.acquire("k", 100)
                admitted.append(clock.now)

        tasks = [asyncio.create_task(worker()) for _ in range(4)]
        await clock.advance(W)
        for t in tasks:
            t.cancel()
        first_10s = sum(1 for t in admitted if t < 1010)
        assert first_10s <= 11, f"{first_10s} requests of 100 tokens in 10 s after a restart"
        assert 55 <= len(admitted) <= 61, "and the steady rate comes back"
    run(main)


def test_a_restarted_limiter_is_not_held_up_by_the_first_calls_of_a_caller_that_died():
    """After a restart the window is assumed full (prefilled). That assumption is not an estimate of
    any call, so it does not make the key "tight" for slow start: when the first three calls'
    caller dies without settling them (a grader replica killed just after the limiter), the other
    callers go on at once instead of waiting out the probes' 15-s timeout (seen in the chaos test)."""
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, restarted=True, rpm=6000, tpm=4_000_000)
        admitted: list[float] = []

        async def caller(dies: bool):
            while True:
                r = await lim.acquire("k", 3000, prompt_tokens=2000, output_tokens=1000)
                admitted.append(clock.now)
                await clock.sleep(1.0)
                if dies:
                    return  # killed holding its reservation: never settled
                await lim.settle(r, Settlement(2100, prompt_tokens=2000, completion_tokens=100))

        dead = [asyncio.create_task(caller(True)) for _ in range(3)]
        await clock.advance(1.5)
        assert len(admitted) == 3  # the first calls, all the dead caller's
        live = [asyncio.create_task(caller(False)) for _ in range(3)]
        await clock.advance(5.0)
        for t in (*dead, *live):
            t.cancel()
        assert len(admitted) >= 3 + 3 * 4, f"others admitted after the first calls were lost: {admitted}"
    run(main)


def test_short_provider_windows_allow_the_pro_rata_share():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, tpm=600, window_s=6, window_margin_s=0)  # 60 tokens per 6 s
        await lim.acquire("k", 60)
        t = asyncio.create_task(lim.acquire("k", 1))
        await clock.advance(5.9)
        assert not t.done()
        await clock.advance(0.2)
        assert t.done()
        # A learned limit arrives in the window's units too: 30 per 6 s is 300 per minute.
        await lim.settle(t.result(), Settlement(1, headers={"x-ratelimit-limit-tokens": "30",
                                                 "x-ratelimit-remaining-tokens": "29"}))
        assert lim.snapshot()["k"]["tpm"] == 300 and lim.snapshot()["k"]["tokens_available"] == 29
    run(main)


def test_headers_taken_before_a_concurrent_refund_cause_no_correction():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, tpm=2000)
        a = await lim.acquire("k", 500)
        b = await lim.acquire("k", 500)
        await lim.settle(a, Settlement(100))  # a's refund happened after the provider answered b
        await lim.settle(b, Settlement(100, headers={"x-ratelimit-limit-tokens": "2000",
                                          "x-ratelimit-remaining-tokens": "1000"}))
        assert lim.snapshot()["k"]["header_corrections"] == 0
    run(main)


def test_a_call_the_provider_counted_late_leaves_the_window_late():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, rpm=1)
        r = await lim.acquire("k", 1)
        await lim.settle(r, Settlement(1, send_delay_s=5))
        t = asyncio.create_task(lim.acquire("k", 1))
        await clock.advance(W + 4.9)
        assert not t.done()
        await clock.advance(0.2)
        assert t.done()
    run(main)


@pytest.mark.parametrize("grant_trip_s,delay_s", [(None, 2.0), (0.1, 0.6)])
def test_the_grants_own_trip_to_the_caller_counts_as_send_delay(grant_trip_s, delay_s):
    """The caller measured 0.5 s from receiving its grant to sending, but the grant took longer to
    reach it (a busy actor or replica): with the time from sending to the answer (1 s) the limiter
    bounds the whole delay since its admission, 3 - 1 = 2 s, from durations alone. When the caller
    also bounds the grant's trip (its acquire round trip less the limiter's queueing: 0.1 s),
    0.5 + 0.1 = 0.6 s is tighter than 2 s, which includes the settlement's trip back."""
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, rpm=1)
        r = await lim.acquire("k", 1)
        await clock.advance(3.0)
        await lim.settle(r, Settlement(1, send_delay_s=0.5, answer_s=1.0, grant_trip_s=grant_trip_s))
        t = asyncio.create_task(lim.acquire("k", 1))
        await clock.advance(W + delay_s - 0.1 - 3.0)
        assert not t.done()
        await clock.advance(0.2)
        assert t.done()
    run(main)


def test_send_delays_are_shown_and_one_beyond_the_margin_is_logged_once(caplog):
    """The largest admission → sending delay of the last window is in the snapshot; one past
    ``window_margin_s`` (the default 1 s) is logged once per key, naming the setting."""
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, rpm=100)
        assert lim.snapshot()["k"]["max_send_delay_s"] is None
        for delay in (0.4, 1.5, 2.5):
            await lim.settle(await lim.acquire("k", 1), Settlement(1, send_delay_s=delay))
        assert lim.snapshot()["k"]["max_send_delay_s"] == pytest.approx(2.5)
        await clock.advance(W + 1)
        assert lim.snapshot()["k"]["max_send_delay_s"] is None, "only the last window's delays"

    with caplog.at_level("WARNING", logger="raygrade.ratelimit.limiter"):
        run(main)
    warned = [r.getMessage() for r in caplog.records if "window_margin_s" in r.getMessage()]
    assert len(warned) == 1 and "1.50 s" in warned[0], warned


def test_reservations_never_settled_are_forgotten_after_an_hour(monkeypatch):
    import raygrade.ratelimit.limiter as limiter_mod

    monkeypatch.setattr(limiter_mod, "OPEN_RESERVATIONS_SOFT_CAP", 3)

    async def main():
        clock = VirtualClock()
        lim = limiter(clock, rpm=1000)
        old = [await lim.acquire("k", 1) for _ in range(3)]  # their callers died: never settled
        await clock.advance(3601)
        fresh = [await lim.acquire("k", 1) for _ in range(2)]
        assert set(lim._open) == {r.id for r in fresh}
        await lim.settle(old[0], Settlement(1))  # a late settlement of a forgotten one is harmless
    run(main)


# -- in-flight limits (self-hosted models) ------------------------------------------------
def test_in_flight_requests_are_capped_and_freed_by_settlement():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, max_concurrent_requests=2)
        a, b = await lim.acquire("k", 10), await lim.acquire("k", 10)
        third = asyncio.ensure_future(lim.acquire("k", 10))
        await asyncio.sleep(0)
        assert not third.done() and lim.snapshot()["k"]["in_flight_requests"] == 2
        await clock.advance(600)  # time alone frees nothing for a while: a settlement does
        assert not third.done()
        await lim.settle(a, Settlement(5))
        c = await third
        assert lim.snapshot()["k"]["in_flight_requests"] == 2
        for r in (b, c):
            await lim.settle(r, Settlement(None, outcome="failure"))  # any outcome frees the slot
        assert lim.snapshot()["k"]["in_flight_requests"] == 0

    run(main)


def test_a_freed_slot_goes_to_interactive_before_bulk():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, max_concurrent_requests=1)
        held = await lim.acquire("k", 10, priority="bulk")
        bulk = asyncio.ensure_future(lim.acquire("k", 10, priority="bulk", job="regrade"))
        await asyncio.sleep(0)
        online = asyncio.ensure_future(lim.acquire("k", 10, priority="interactive", job="job-1"))
        await asyncio.sleep(0)
        await lim.settle(held, Settlement(10))
        await asyncio.sleep(0)
        assert online.done() and not bulk.done()
        await lim.settle(online.result(), Settlement(10))
        await bulk

    run(main)


def test_in_flight_tokens_are_capped_but_one_large_call_still_goes():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, max_concurrent_tokens=1000)
        a = await lim.acquire("k", 700)
        b = asyncio.ensure_future(lim.acquire("k", 400))
        await asyncio.sleep(0)
        assert not b.done()
        await lim.settle(a, Settlement(100))
        big = asyncio.ensure_future(lim.acquire("k", 5000))  # larger than the budget: alone, it goes
        r = await b
        await asyncio.sleep(0)
        assert not big.done()
        await lim.settle(r, Settlement(400))
        await big

    run(main)


@pytest.mark.parametrize("counted", [True, False])
def test_a_rejected_call_is_refunded_when_the_provider_does_not_count_rejections(counted):
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, rpm=2, tpm=1000, rejected_requests_count=counted, default_backoff_s=1)
        r = await lim.acquire("k", 600)
        await lim.settle(r, Settlement(None, outcome="rate_limited"))
        snap = lim.snapshot()["k"]
        if counted:  # OpenAI's rule: the 429 stays charged for its window
            assert (snap["requests_available"], snap["tokens_available"]) == (1, 400)
        else:
            assert (snap["requests_available"], snap["tokens_available"]) == (2, 1000)
        assert snap["paused_for_s"] == 1 and snap["rate_limited"] == 1  # the pause applies either way

    run(main)


@pytest.mark.parametrize("provider_counts", [True, False])
def test_the_rule_for_rejected_calls_is_learned_from_remaining_requests(provider_counts):
    """Configured as not counting rejections, the limiter refunds two 429s; fresh readings of
    ``x-ratelimit-remaining-requests`` that still include them (two in a row) switch the key to
    keeping rejected calls charged. A provider whose readings leave them out changes nothing."""
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, rpm=10, rejected_requests_count=False, default_backoff_s=1)
        for _ in range(2):
            r = await lim.acquire("k", 1)
            await lim.settle(r, Settlement(None, outcome="rate_limited"))
            await clock.advance(1)  # the pause after a 429
        extra = 2 if provider_counts else 0
        for n in (1, 2):
            r = await lim.acquire("k", 1)
            await lim.settle(r, Settlement(1, headers={"x-ratelimit-limit-requests": "10",
                                            "x-ratelimit-remaining-requests": str(10 - n - extra)}))
            await clock.advance(1)
        assert lim.snapshot()["k"]["rejections_counted"] is provider_counts
        r = await lim.acquire("k", 1)
        before = lim.snapshot()["k"]["requests_available"]
        await lim.settle(r, Settlement(None, outcome="rate_limited"))
        assert lim.snapshot()["k"]["requests_available"] == before + (0 if provider_counts else 1)

    run(main)


# -- the provider's own count ---------------------------------------------------------------
def test_reservations_learn_the_providers_prompt_count():
    """A provider that counts 4x raygrade's prompt estimate (images by another rule): from the
    second call every reservation is prompt x 4 (plus the estimate margin) + max_tokens, so the
    window holds what it charges."""
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, tpm=100_000)
        sizes = []
        for _ in range(6):
            r = await lim.acquire("k", 1_000 + 200, prompt_tokens=1_000)
            sizes.append(r.tokens)
            await lim.settle(r, Settlement(4_000 + 50, prompt_tokens=4_000))
        assert sizes[0] == 1_200 and sizes[-1] > 3_900 + 200
        assert sizes[1] == math.ceil(4_000 * (1 + ESTIMATE_MARGIN)) + 200, \
            "one reading above the prior guess is taken whole, not averaged with it"
        snap = lim.snapshot()["k"]
        assert snap["count_ratio"] == pytest.approx(4.0, rel=0.05) and snap["count_ratio_samples"] == 6

    run(main)


def test_images_and_text_are_learned_apart():
    """A provider whose text count agrees with raygrade's but which counts images 4x: image calls
    teach the image ratio (what their text part does not explain), text-only calls keep theirs, so a
    text-only call is not reserved as if it carried the images, nor an image call as if it had none."""
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, tpm=1_000_000)
        for _ in range(3):  # text only: the provider agrees
            r = await lim.acquire("k", 1_000 + 200, prompt_tokens=1_000)
            await lim.settle(r, Settlement(1_000 + 50, prompt_tokens=1_000))
        for _ in range(6):  # 400 text + 600 image tokens by raygrade's rule; the provider counts 400 + 2400
            r = await lim.acquire("k", 1_000 + 200, prompt_tokens=1_000, image_tokens=600)
            await lim.settle(r, Settlement(2_800 + 50, prompt_tokens=2_800))
        snap = lim.snapshot()["k"]
        assert snap["count_ratio"] == pytest.approx(1.0) and snap["image_count_ratio"] == pytest.approx(4.0, rel=0.05)
        text = await lim.acquire("k", 1_000 + 200, prompt_tokens=1_000)
        image_heavy = await lim.acquire("k", 1_000 + 200, prompt_tokens=1_000, image_tokens=900)
        assert text.tokens == 1_200  # not 1_000 x the mixed calls' 2.8
        assert image_heavy.tokens == pytest.approx(100 + 900 * 4 + 200, rel=0.05)

    run(main)


def test_a_provider_miscounting_text_too_is_not_under_reserved_when_the_mix_changes():
    """Every call so far had images and the provider counts the whole prompt 4x: the split blames the
    images alone (text never seen apart), so a later call with more text would be under-reserved; the
    ratio learned on whole prompts with images is its floor."""
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, tpm=1_000_000)
        for _ in range(6):  # 600 text + 400 image tokens by raygrade's rule; counted 4x in all
            r = await lim.acquire("k", 1_000 + 200, prompt_tokens=1_000, image_tokens=400)
            await lim.settle(r, Settlement(4_000 + 50, prompt_tokens=4_000))
        text_heavy = await lim.acquire("k", 1_000 + 200, prompt_tokens=1_000, image_tokens=100)
        assert text_heavy.tokens >= 0.95 * (4_000 + 200)

    run(main)


def test_an_over_estimate_shrinks_reservations_only_after_evidence_and_slowly():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, tpm=100_000)
        sizes = []
        for _ in range(8):
            r = await lim.acquire("k", 1_000, prompt_tokens=1_000)
            sizes.append(r.tokens)
            await lim.settle(r, Settlement(500, prompt_tokens=500))  # the provider counts half
        assert sizes[:3] == [1_000, 1_000, 1_000], "no shrinking before 3 settled calls"
        assert 500 < sizes[-1] < 1_000 and sizes == sorted(sizes, reverse=True)
        r = await lim.acquire("k", 1_000)  # without a prompt part, nothing is scaled
        assert r.tokens == 1_000

    run(main)


def test_failed_calls_teach_no_ratio():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, tpm=100_000)
        r = await lim.acquire("k", 1_000, prompt_tokens=800)
        await lim.settle(r, Settlement(None, outcome="failure", prompt_tokens=10))
        assert lim.snapshot()["k"]["count_ratio_samples"] == 0

    run(main)


def test_until_the_count_is_learned_at_most_three_calls_fly_when_the_window_is_tight():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, tpm=4_000)  # 4x (the window's calls + a 300-token call) > 4_000 once 900 are used
        calls = [asyncio.ensure_future(lim.acquire("k", 300, prompt_tokens=200)) for _ in range(5)]
        await asyncio.sleep(0)
        assert [c.done() for c in calls] == [True, True, True, False, False]
        for c in calls[:3]:
            await lim.settle(c.result(), Settlement(850, prompt_tokens=800))  # the provider counts 4x
        await calls[3]
        assert calls[3].result().tokens > 300 + 2 * 200, "later calls are reserved at the learned count"
        roomy = limiter(VirtualClock(), tpm=1_000_000)  # far below the limit: no slow start
        assert all([(await roomy.acquire("k", 300, prompt_tokens=200)) is not None for _ in range(6)])

    run(main)


def test_a_first_burst_is_held_to_what_a_4x_count_would_fit():
    """Before anything is learned, a burst of calls to an empty window is admitted only while 4x
    their sizes fit (each may be an under-estimate), so a provider counting 4x sees at most its
    limit; then at most three fly until they teach the count."""
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, tpm=100_000)
        calls = [asyncio.ensure_future(lim.acquire("k", 2_000, prompt_tokens=1_500)) for _ in range(30)]
        await asyncio.sleep(0)
        admitted = [c for c in calls if c.done()]
        assert 4 * 2_000 * len(admitted) <= 100_000 and len(admitted) >= 3
        for c in admitted[:3]:
            await lim.settle(c.result(), Settlement(6_000 + 100, prompt_tokens=6_000))  # the provider counts 4x
        await asyncio.sleep(0)
        assert sum(c.done() for c in calls) > len(admitted), "learned: the rest go at 4x their estimate"
        for c in calls:
            c.cancel()

    run(main)


def test_calls_in_flight_are_recharged_at_the_count_once_it_is_learned():
    """Calls admitted at 1x before the count was known are raised to the learned count while in
    flight: the window holds what the provider counts for them, so calls admitted after learning
    do not overfill it."""
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, tpm=1_000_000)
        early = [await lim.acquire("k", 2_000, prompt_tokens=1_500) for _ in range(6)]  # all at 1x
        before = lim.snapshot()["k"]["tokens_available"]
        for r in early[:3]:  # the provider counts 4x
            await lim.settle(r, Settlement(6_000 + 100, prompt_tokens=6_000))
        after = lim.snapshot()["k"]["tokens_available"]
        # 3 settled at 6_100 each, the 3 still in flight raised from 2_000 to about 500 + 1_500 x ratio
        assert before - after > 3 * 4_100 + 3 * 3_000

    run(main)


def test_image_calls_after_text_calls_start_slowly_too():
    """Text-only calls taught the text count; the first calls with images still start slowly, as
    their (image) count is not learned yet."""
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, tpm=20_000)
        for _ in range(3):
            r = await lim.acquire("k", 500, prompt_tokens=400)
            await lim.settle(r, Settlement(450, prompt_tokens=400))
        await clock.advance(W + 1)  # an empty window again
        calls = [asyncio.ensure_future(lim.acquire("k", 2_000, prompt_tokens=1_500, image_tokens=1_000))
                 for _ in range(10)]
        await asyncio.sleep(0)
        assert sum(c.done() for c in calls) <= 3
        for c in calls:
            c.cancel()

    run(main)


def test_a_caller_that_never_settles_holds_its_slot_only_until_the_in_flight_timeout():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, max_concurrent_requests=1, in_flight_timeout_s=120)
        await lim.acquire("k", 10)  # its caller dies: no settlement ever
        nxt = asyncio.ensure_future(lim.acquire("k", 10))
        await clock.advance(100)
        assert not nxt.done()
        await clock.advance(25)
        await nxt

    run(main)


def test_a_learning_probe_that_never_settles_stops_holding_calls_back():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, tpm=2_000)
        for _ in range(3):  # three probes whose callers die (a killed grader replica)
            await lim.acquire("k", 300, prompt_tokens=200)
        nxt = asyncio.ensure_future(lim.acquire("k", 300, prompt_tokens=200))
        await asyncio.sleep(0)
        assert not nxt.done()
        await clock.advance(16)
        await nxt

    run(main)
