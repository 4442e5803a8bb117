"""Short windows (issue 25): a per-minute limit also held pro rata over a few seconds, configured or
learned, as an exact sliding window beside the minute's (``raygrade/ratelimit/short.py``)."""

import asyncio

import pytest
from support.clock import VirtualClock

from raygrade.config import RateLimitConfig
from raygrade.ratelimit.limiter import RateLimiter, Settlement
from raygrade.ratelimit.short import short_length, sync_short_windows
from raygrade.ratelimit.window import SlidingWindow


def test_short_windows_follow_the_minute_windows_and_start_with_what_they_hold():
    minute = {"tokens": SlidingWindow(6000, 61.0), "requests": SlidingWindow(60, 61.0)}
    minute["tokens"].charge(500, 0.0)        # before the short span: not carried over
    minute["tokens"].charge(700, 55.0)
    c = minute["tokens"].charge(300, 58.0)
    minute["tokens"].postpone(c, 2.0, 58.5)  # reached the provider 2 s late
    short: dict[str, SlidingWindow] = {}
    sync_short_windows(short, minute, 10.0, 60.0, 1.0, now=60.0)
    assert set(short) == {"tokens", "requests"}
    tok = short["tokens"]
    assert tok.limit == 1000 and tok.window_s == pytest.approx(short_length(10, 60, 1)) == pytest.approx(10 + 1 / 6)
    assert tok.used(60.0) == 1000                             # 700 + 300, each freeing one short window after it
    assert tok.used(65.2) == 300 and tok.used(70.2) == 0      # 55 + 10.17; 58 + 2 + 10.17
    # A lower limit learned later reaches the short window; its charges stay.
    tok.charge(400, 71.0)
    minute["tokens"].limit = 3000
    sync_short_windows(short, minute, 10.0, 60.0, 1.0, now=72.0)
    assert short["tokens"] is tok and tok.limit == 500 and tok.used(72.0) == 400
    # A dimension without a minute window has none; no period (or not shorter than the window): none.
    sync_short_windows(short, {"tokens": minute["tokens"]}, 10.0, 60.0, 1.0, now=72.0)
    assert set(short) == {"tokens"}
    sync_short_windows(short, minute, 60.0, 60.0, 1.0, now=72.0)
    assert short == {}


def test_a_configured_short_window_holds_every_span_to_its_share_and_refunds_reach_it():
    async def main():
        clock = VirtualClock()
        lim = RateLimiter(clock=clock, sleep=clock.sleep)
        # 6,000 TPM with a burst of the whole minute: only the 10-s window (1,000) holds it.
        lim.configure("k", RateLimitConfig(tpm=6000, window_margin_s=0, burst_s=60, short_window_s=10))
        rs = [await lim.acquire("k", 250) for _ in range(4)]
        waiter = asyncio.create_task(lim.acquire("k", 200))
        await clock.advance(0.1)
        assert not waiter.done(), "a fifth call passes the 10-s share"
        await lim.settle(rs[0], Settlement(50))          # refunded to 50 in both windows: now it fits
        await clock.advance(0.1)
        assert waiter.done()
        snap = lim.snapshot()["k"]
        assert snap["short_window_s"] == 10 and snap["tokens_available"] == 6000 - 3 * 250 - 50 - 200
        later = asyncio.create_task(lim.acquire("k", 250))
        await clock.advance(9.5)
        assert not later.done()
        await clock.advance(0.5)                          # the first charges leave the 10-s window
        assert later.done()
    asyncio.run(main())


def test_callers_that_disagree_keep_the_shorter_short_window():
    a = RateLimitConfig(tpm=6000, short_window_s=10)
    assert a.stricter(RateLimitConfig(tpm=6000)).short_window_s == 10
    assert a.stricter(RateLimitConfig(tpm=6000, short_window_s=1)).short_window_s == 1
    with pytest.raises(ValueError):
        RateLimitConfig(short_window_s=0)
