"""Requests per day (Gemini's rule) in the shared limiter, on a virtual clock: the day's count,
its reset at midnight Pacific time (a calendar day across daylight-saving changes), a day the
provider said is spent, and callers waiting for the reset or refused by their patience."""

import asyncio
import datetime as dt

import pytest
from support.clock import VirtualClock

from raygrade.config import RateLimitConfig
from raygrade.config.rate_limit import quota_zone
from raygrade.errors import QuotaExhaustedError, RateLimitedError
from raygrade.grading import classify_outcome
from raygrade.ratelimit.daily import DailyQuota, next_midnight
from raygrade.ratelimit.limiter import RateLimiter, Settlement
from raygrade.ratelimit.offers import OFFER_TTL_S

#: 23:59:00 Pacific (PST) on 3 Dec 2026: the quota day ends 60 s after the clock starts.
START = dt.datetime(2026, 12, 4, 7, 59, tzinfo=dt.UTC).timestamp()


def limiter(clock: VirtualClock, **limits) -> RateLimiter:
    """One key ``k`` whose wall clock is ``START`` when the virtual clock starts."""
    t0 = clock()
    lim = RateLimiter(clock=clock, sleep=clock.sleep, wall=lambda: START + clock() - t0)
    lim.configure("k", RateLimitConfig(**{"burst_s": None, **limits}))
    return lim


def test_midnight_pacific_is_a_calendar_day_across_daylight_saving_changes():
    pst = dt.datetime(2026, 3, 7, 12, 0, tzinfo=dt.UTC).timestamp()  # 04:00 PST, Saturday 7 March
    spring = next_midnight(pst)
    assert dt.datetime.fromtimestamp(spring, dt.UTC) == dt.datetime(2026, 3, 8, 8, 0, tzinfo=dt.UTC)
    # 8 March has 23 hours (clocks go forward at 02:00): the next midnight is 23 h later, in PDT
    assert next_midnight(spring) - spring == 23 * 3600
    assert dt.datetime.fromtimestamp(next_midnight(spring), dt.UTC) == dt.datetime(2026, 3, 9, 7, 0, tzinfo=dt.UTC)
    autumn = dt.datetime(2026, 11, 1, 7, 0, tzinfo=dt.UTC).timestamp()  # midnight PDT, 1 November
    assert next_midnight(autumn) - autumn == 25 * 3600
    assert next_midnight(autumn - 1) == autumn, "one second before midnight: midnight"


def test_the_days_count_waits_for_midnight_pacific_then_starts_again():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, rpd=3)
        for _ in range(3):
            await lim.acquire("k", 10)
        snap = lim.snapshot()["k"]
        assert (snap["rpd"], snap["day_requests"], snap["day_resets_at"]) == (3, 3, "2026-12-04T00:00:00-08:00")
        fourth = asyncio.create_task(lim.acquire("k", 10))
        await clock.advance(59.9)
        assert not fourth.done(), "nothing is sent before the reset"
        await clock.advance(0.2)
        assert fourth.done() and fourth.result().waited_s == pytest.approx(60, abs=0.2)
        snap = lim.snapshot()["k"]
        assert (snap["day_requests"], snap["day_resets_at"]) == (1, "2026-12-05T00:00:00-08:00")
        assert snap["day_spent_until"] is None
    asyncio.run(main())


def test_a_caller_whose_patience_ends_before_the_reset_is_refused_at_once_and_others_wait():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, rpd=1)
        await lim.acquire("k", 10)
        patient = asyncio.create_task(lim.acquire("k", 10, patience_s=900))
        with pytest.raises(QuotaExhaustedError) as refused:
            await lim.acquire("k", 10, patience_s=30)
        err = refused.value
        assert err.error_type == "quota_exhausted" and not err.retryable and err.code == "requests_per_day"
        assert err.reset_at == pytest.approx(START + 60) and "2026-12-04T00:00:00-08:00" in err.message
        assert "rpd=1" in err.message and "patience of 30 s" in err.message
        assert not patient.done()
        await clock.advance(60.1)
        assert patient.done() and patient.result().waited_s == pytest.approx(60, abs=0.2)
        assert lim.snapshot()["k"]["quota_refused"] == 1
    asyncio.run(main())


def test_the_providers_daily_refusal_spends_the_day_without_a_configured_limit():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, rpm=100)  # no rpd: only the provider knows its daily quota
        r = await lim.acquire("k", 10)
        reset = START + 3600.0  # the provider's reset, whatever the zone says
        await lim.settle(r, Settlement(None, outcome="quota_exhausted", quota_reset_at=reset))
        assert lim.snapshot()["k"]["day_spent_until"] == "2026-12-04T00:59:00-08:00"
        with pytest.raises(QuotaExhaustedError, match="the provider refused it"):
            await lim.acquire("k", 10, patience_s=900)
        waiting = asyncio.create_task(lim.acquire("k", 10))  # no patience given: waits however long
        await clock.advance(3599)
        assert not waiting.done()
        await clock.advance(1.1)
        assert waiting.done()
        assert lim.snapshot()["k"]["breaker"] == "closed", "a spent quota is not a failing provider"
    asyncio.run(main())


def test_a_rejection_the_provider_does_not_count_is_refunded_from_the_day():
    async def main():
        clock = VirtualClock()
        lim = limiter(clock, rpd=2, rejected_requests_count=False)
        await lim.settle(await lim.acquire("k", 10), Settlement(None, outcome="rate_limited", retry_after_s=0.1))
        assert lim.snapshot()["k"]["day_requests"] == 0
        counted = limiter(VirtualClock(), rpd=2)
        await counted.settle(await counted.acquire("k", 10), Settlement(None, outcome="rate_limited"))
        assert counted.snapshot()["k"]["day_requests"] == 1
    asyncio.run(main())


def test_a_refund_after_the_day_rolled_over_leaves_the_new_day_alone():
    now = [START]
    q = DailyQuota(5, lambda: now[0])
    day = q.charge()
    now[0] += 120  # past midnight
    q.charge()
    q.adjust(day, 0)
    assert q.used == 1


def test_callers_offering_different_daily_limits_keep_the_lower():
    assert RateLimitConfig(rpd=100).stricter(RateLimitConfig(rpd=50)).rpd == 50
    assert RateLimitConfig().stricter(RateLimitConfig(rpd=50)).rpd == 50
    with pytest.raises(ValueError):
        RateLimitConfig(rpd=0)


def test_a_daily_refusal_settles_as_quota_exhausted_and_a_minute_one_as_rate_limited():
    assert classify_outcome(QuotaExhaustedError("spent", reset_at=START)) == "quota_exhausted"
    assert classify_outcome(RateLimitedError("429", provider_status=429)) == "rate_limited"


def test_a_configured_zone_moves_the_days_reset_and_a_wrong_one_is_refused():
    """``rate_limit.rpd_reset_zone``: the day ends at midnight there (an IANA zone or a fixed
    offset to the second); an unknown zone is a validation error naming it."""
    async def main():
        clock = VirtualClock()
        # START is 07:59:00 UTC, 23:59:30 at UTC+16:00:30: its midnight falls 30 s later.
        lim = limiter(clock, rpd=1, rpd_reset_zone="UTC+16:00:30")
        await lim.acquire("k", 10)
        assert lim.snapshot()["k"]["day_resets_at"] == "2026-12-05T00:00:00+16:00:30"
        second = asyncio.create_task(lim.acquire("k", 10))
        await clock.advance(29.9)
        assert not second.done()
        await clock.advance(0.2)
        assert second.done() and second.result().waited_s == pytest.approx(30, abs=0.2)
        # A caller configured with UTC: the key keeps its first caller's zone while that caller's
        # offer is fresh, then counts days in UTC (the current day ends at midnight UTC).
        lim.configure("k", RateLimitConfig(rpd=1, burst_s=None, rpd_reset_zone="UTC"))
        assert lim.snapshot()["k"]["day_resets_at"] == "2026-12-06T00:00:00+16:00:30"
        await clock.advance(OFFER_TTL_S + 1)
        lim.configure("k", RateLimitConfig(rpd=1, burst_s=None, rpd_reset_zone="UTC"))
        assert lim.snapshot()["k"]["day_resets_at"] == "2026-12-05T00:00:00+00:00"
    asyncio.run(main())
    tokyo = next_midnight(START, quota_zone("Asia/Tokyo"))  # 16:59 in Tokyo: 7 h 1 min to go
    assert tokyo - START == 7 * 3600 + 60
    assert quota_zone("UTC-08:00").utcoffset(None) == dt.timedelta(hours=-8)
    for bad in ("Mars/Olympus", "UTC+24:00", "+05:00"):
        with pytest.raises(ValueError, match="zone|offset"):
            RateLimitConfig(rpd_reset_zone=bad)
