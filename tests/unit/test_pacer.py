"""Smooth admission (issue 25): the pacer's bucket, the limiter admitting at the steady rate after
a burst, the burst learned down from 429s that the windows do not explain, and a provider that
enforces its per-minute limit per 10 s, all on the virtual clock."""

import asyncio
import collections

import pytest
from support.clock import VirtualClock

from raygrade.config import RateLimitConfig
from raygrade.ratelimit.limiter import RateLimiter, Settlement
from raygrade.ratelimit.pacer import MIN_BURST_S, MIN_RATE_SCALE, Pacer
from raygrade.ratelimit.short import short_length


def test_the_bucket_lets_out_a_burst_then_the_steady_rate():
    p = Pacer(2.0, now=0)                       # rate 100/s: a bucket of 200
    assert p.wait_for(150, 100, 0) == 0
    p.take(150, 100, 0)
    assert p.wait_for(100, 100, 0) == pytest.approx(0.5)   # 50 left, 50 more at 100/s
    assert p.wait_for(100, 100, 0.5) == 0
    p.take(100, 100, 0.5)
    # A call larger than the bucket goes when it is full, and leaves it in debt.
    assert p.wait_for(500, 100, 0.5) == pytest.approx(2.0)
    p.take(500, 100, 2.5)
    assert p.level == pytest.approx(-300) and p.wait_for(1, 100, 2.5) == pytest.approx(3.01)
    p.take(-1000, 100, 2.5)                     # a refund refills it, up to its size
    assert p.level == pytest.approx(200)
    assert p.wait_for(0, 100, 3) == 0 and p.wait_for(10, 0, 3) == 0
    p.empty(3)
    assert p.wait_for(100, 100, 3) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        Pacer(0)


async def _admit_times(lim, clock, n, tokens, key="k"):
    """When each of ``n`` concurrent calls of ``tokens`` was admitted, seconds from now."""
    start, times = clock(), []

    async def one():
        await lim.acquire(key, tokens)
        times.append(clock())

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    while len(times) < n:
        await clock.advance(0.25)
    await asyncio.gather(*tasks)
    return [t - start for t in times]


def test_the_limiter_admits_a_burst_then_at_the_windows_rate():
    async def main():
        clock = VirtualClock()
        lim = RateLimiter(clock=clock, sleep=clock.sleep)
        lim.configure("k", RateLimitConfig(tpm=6000, window_margin_s=0, burst_s=2))   # 100 tokens/s
        times = await _admit_times(lim, clock, 10, 100)
        assert times[:2] == [0, 0], "the burst: two seconds' worth at once"
        assert times[2:] == pytest.approx([1, 2, 3, 4, 5, 6, 7, 8], abs=0.26), "then one per second"
        assert lim.snapshot()["k"]["burst_s"] == 2

        unpaced = RateLimiter(clock=clock, sleep=clock.sleep)
        unpaced.configure("k", RateLimitConfig(tpm=6000, window_margin_s=0, burst_s=None))
        assert set(await _admit_times(unpaced, clock, 10, 100)) == {0}, "off: the whole window at once"
    asyncio.run(main())


def test_a_429_while_the_window_has_room_adds_a_short_window_then_halves_the_burst_once_per_burst():
    async def main():
        clock = VirtualClock()
        lim = RateLimiter(clock=clock, sleep=clock.sleep)
        lim.configure("k", RateLimitConfig(tpm=6000, window_margin_s=0, burst_s=4, default_backoff_s=0.01))
        rs = [await lim.acquire("k", 100) for _ in range(3)]
        for r in rs:                               # one burst rejected together: learned from once
            await lim.settle(r, Settlement(None, outcome="rate_limited"))
        snap = lim.snapshot()["k"]                 # first a 10-s window (raygrade.ratelimit.short) ...
        assert snap["short_window_s"] == 10 and snap["short_window_learned"] == 1
        assert snap["burst_s"] == 1 and snap["burst_lowered"] == 0, "... which allows a tenth of it at once"
        await clock.advance(1)
        await lim.settle(await lim.acquire("k", 100), Settlement(None, outcome="rate_limited"))
        snap = lim.snapshot()["k"]
        assert snap["burst_s"] == 0.5 and snap["burst_lowered"] == 1 and snap["short_window_learned"] == 1
        for _ in range(16):
            await clock.advance(2)
            await lim.settle(await lim.acquire("k", 100), Settlement(None, outcome="rate_limited"))
        snap = lim.snapshot()["k"]
        assert snap["burst_s"] == MIN_BURST_S, "never below the floor"
        # then the pace: 2 % a time, down to its floor
        assert snap["pace_rate_scale"] == MIN_RATE_SCALE and snap["burst_lowered"] == 4 + 9  # halvings, then 2 % steps

        # A 429 with the window (nearly) full is the window's business: the burst stays.
        full = RateLimiter(clock=clock, sleep=clock.sleep)
        full.configure("k", RateLimitConfig(tpm=600, window_margin_s=0, burst_s=None))
        rs = [await full.acquire("k", 100) for _ in range(6)]
        full.configure("k", RateLimitConfig(tpm=600, window_margin_s=0, burst_s=None))
        await full.settle(rs[-1], Settlement(None, outcome="rate_limited"))
        assert full.snapshot()["k"]["burst_lowered"] == 0

        # The provider's own count decides when it sends one: a full window of ours whose 429 says
        # the provider's minute had room is enforcement over a shorter period; the reverse is not.
        busy = RateLimiter(clock=clock, sleep=clock.sleep)
        busy.configure("k", RateLimitConfig(tpm=600, window_margin_s=0, burst_s=60))  # a window at once
        for remaining, lowered in (("50", 0), ("500", 1)):
            await clock.advance(61)
            rs = [await busy.acquire("k", 100) for _ in range(6)]
            await busy.settle(rs[-1], Settlement(None, outcome="rate_limited", headers={
                "x-ratelimit-limit-tokens": "600", "x-ratelimit-remaining-tokens": remaining}))
            for r in rs[:-1]:
                await busy.settle(r, Settlement(100))
            snap = busy.snapshot()["k"]
            assert snap["burst_lowered"] + snap["short_window_learned"] == lowered, remaining
    asyncio.run(main())


def test_a_restarted_limiter_starts_with_an_empty_bucket():
    async def main():
        clock = VirtualClock()
        lim = RateLimiter(clock=clock, sleep=clock.sleep, restarted=True)
        lim.configure("k", RateLimitConfig(rpm=600, window_margin_s=0, burst_s=1))   # 10 requests/s
        # The prefilled window frees capacity at the steady rate, and so does the pacer.
        times = await _admit_times(lim, clock, 5, 0)
        assert min(times) > 0
    asyncio.run(main())


@pytest.mark.parametrize("configured", [None, 10.0])
def test_a_provider_enforcing_its_tpm_per_10_s_draws_at_most_one_429_at_the_full_rate(configured):
    """The issue's case: a provider that allows TPM/6 in any 10 s. Eight callers send 200-token
    calls (ten fit its 10-s budget) for five minutes; the provider rejects (and does not count) a
    call that would pass its 10-s budget. Learned (``short_window_s`` unset): the default burst
    (6 s) draws one 429 within the first 10 s, which adds a 10-s short window holding what the
    minute charged in its span; then none. Configured: none at all. Either way every full minute
    after the first uses what the short window allows in full: 10 s's share per 10 s plus its
    margin (0.976 of the TPM; the burst-halving that came before this took five 429s)."""
    async def main():
        clock = VirtualClock()
        tpm = 12_000
        lim = RateLimiter(clock=clock, sleep=clock.sleep)
        lim.configure("k", RateLimitConfig(tpm=tpm, rejected_requests_count=False, short_window_s=configured))
        served: collections.deque = collections.deque()   # (t, tokens) the provider counted
        ok, rejected_at = [], []
        end = 1000.0 + 300

        async def caller():
            while clock() < end:
                r = await lim.acquire("k", 200)
                now = clock()
                while served and served[0][0] <= now - 10:
                    served.popleft()
                if sum(n for _, n in served) + 200 > tpm / 6:
                    rejected_at.append(now - 1000)
                    await lim.settle(r, Settlement(None, outcome="rate_limited", retry_after_s=1.0))
                else:
                    served.append((now, 200))
                    ok.append(now)
                    await lim.settle(r, Settlement(200))

        tasks = [asyncio.create_task(caller()) for _ in range(8)]
        while clock() < end:
            await clock.advance(0.5)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        per_minute = [sum(1 for t in ok if m <= t - 1000 < m + 60) * 200 for m in range(60, 300, 60)]
        snap = lim.snapshot()["k"]
        if configured:
            assert rejected_at == [] and snap["short_window_learned"] == 0
        else:
            assert len(rejected_at) == 1 and rejected_at[0] < 10, rejected_at
            assert snap["short_window_learned"] == 1 and snap["burst_lowered"] == 0
        # The short window (10 s + its margin) lets 10 s's share through per window length.
        assert min(per_minute) >= 0.99 * tpm * 10 / short_length(10, 60, 1), per_minute
        assert snap["short_window_s"] == 10
    asyncio.run(main())
