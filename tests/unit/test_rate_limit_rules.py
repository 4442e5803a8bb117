"""The limiter's rule interface (raygrade/ratelimit/rules.py): every rule of a key is waited for,
charged and settled through one protocol, per dimension, on a virtual clock."""

import asyncio
import datetime as dt

import pytest
from support.clock import VirtualClock

from raygrade.config import RateLimitConfig
from raygrade.ratelimit.daily import DailyQuota
from raygrade.ratelimit.limiter import RateLimiter, Settlement
from raygrade.ratelimit.rules import (
    DIMENSIONS,
    Rule,
    call_amounts,
    charge_all,
    settle_charges,
    settled_amounts,
    wait_all,
)
from raygrade.ratelimit.window import SlidingWindow

START = dt.datetime(2026, 12, 4, 7, 59, tzinfo=dt.UTC).timestamp()  # 23:59 Pacific: the day ends in 60 s


class Ledger:
    """A rule that records what it is told and holds each call for ``wait_s`` of its own."""

    def __init__(self, wait_s: float = 0.0):
        self.wait_s, self.live, self.log = wait_s, {}, []

    def wait_for(self, amount, now):
        return self.wait_s

    def charge(self, amount, now):
        entry = len(self.log)
        self.log.append(("charge", amount))
        self.live[entry] = amount
        return entry

    def adjust(self, entry, new_amount, now):
        self.log.append(("adjust", new_amount))
        self.live[entry] = new_amount

    def postpone(self, entry, seconds, now):
        self.log.append(("postpone", seconds))

    def prefill(self, now):
        self.log.append(("prefill", now))


def test_the_sliding_window_the_daily_quota_and_a_new_rule_share_one_interface():
    for rule in (SlidingWindow(10), DailyQuota(5, lambda: START), Ledger()):
        assert isinstance(rule, Rule)


def test_a_call_waits_for_its_slowest_rule_and_is_charged_in_each_dimension():
    slow, minute, day = Ledger(wait_s=3.0), SlidingWindow(1000, 60.0), DailyQuota(2, lambda: START)
    rules = [("tokens", minute), ("output_tokens", slow), ("requests", day)]
    amounts = call_amounts(700, 500, 200)
    assert wait_all(rules, amounts, 0.0) == 3.0
    slow.wait_s = 0.0
    charged = charge_all(rules, amounts, 0.0)
    assert [c.dimension for c in charged] == ["tokens", "output_tokens", "requests"]
    assert minute.used(0.0) == 700 and slow.log == [("charge", 200)] and day.used == 1
    assert wait_all(rules, amounts, 1.0) == pytest.approx(59.0), "the minute holds 700 of 1000 until it frees"
    # the provider used 350 tokens of which 120 output; the day's request stays counted
    settle_charges(charged, settled_amounts(Settlement(350, completion_tokens=120), refund_unused=True,
                                            counted=True), 2.0)
    assert minute.used(2.0) == 350 and slow.live[0] == 120 and day.used == 1


def test_settled_amounts_per_dimension():
    s = Settlement(1000, completion_tokens=300, cached_tokens=200)
    assert settled_amounts(s, refund_unused=True, counted=True) == {
        "tokens": 1000, "output_tokens": 300, "input_tokens": 500}
    # without refunds the up-front charge stays, but the input count is still the provider's
    assert settled_amounts(s, refund_unused=False, counted=True) == {"input_tokens": 500}
    assert settled_amounts(Settlement(None, outcome="failure"), refund_unused=True, counted=True) == {}
    assert settled_amounts(Settlement(None, outcome="rate_limited"), refund_unused=True, counted=False) == \
        dict.fromkeys(DIMENSIONS, 0.0), "an uncounted rejection is taken back from every rule, the day's too"


def test_an_uncounted_rejection_is_refunded_from_every_rule_of_the_key():
    async def main():
        clock = VirtualClock()
        lim = RateLimiter(clock=clock, sleep=clock.sleep, wall=lambda: START + clock())
        lim.configure("k", RateLimitConfig(rpm=10, tpm=1000, itpm=800, otpm=300, rpd=5, burst_s=None,
                                           rejected_requests_count=False))
        r = await lim.acquire("k", 600, output_tokens=200)
        snap = lim.snapshot()["k"]
        assert (snap["requests_available"], snap["tokens_available"], snap["input_tokens_available"],
                snap["output_tokens_available"], snap["day_requests"]) == (9, 400, 400, 100, 1)
        await lim.settle(r, Settlement(None, outcome="rate_limited", retry_after_s=0.1))
        snap = lim.snapshot()["k"]
        assert (snap["requests_available"], snap["tokens_available"], snap["input_tokens_available"],
                snap["output_tokens_available"], snap["day_requests"]) == (10, 1000, 800, 300, 0)
    asyncio.run(main())


def test_a_late_call_is_postponed_in_every_rule_and_a_restart_prefills_each():
    async def main():
        clock = VirtualClock()
        lim = RateLimiter(clock=clock, sleep=clock.sleep, restarted=True, wall=lambda: START + clock())
        lim.configure("k", RateLimitConfig(rpm=60, rpd=100, burst_s=None))
        snap = lim.snapshot()["k"]
        assert snap["requests_available"] == pytest.approx(0), "a restarted key starts used at its limit"
        assert snap["day_requests"] == 0, "the day's count before a restart is unknown: not invented"
        await clock.advance(61.0)
        r = await lim.acquire("k", 1)
        await clock.advance(5.0)
        await lim.settle(r, Settlement(1, send_delay_s=5.0))
        await clock.advance(57.0)  # 62 s after the grant: past the window, not 61 s after it left
        assert lim.snapshot()["k"]["requests_available"] == 59
    asyncio.run(main())
