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
    # The minute's margin scaled to the short window (1/6 s), but not below the floor.
    assert tok.limit == 1000 and tok.window_s == pytest.approx(short_length(10, 60, 1)) == pytest.approx(10.25)
    assert short_length(10, 60, 3) == pytest.approx(10.5) and short_length(10, 60, 0.1) == pytest.approx(10.1)
    assert tok.used(60.0) == 1000                             # 700 + 300, each freeing one short window after it
    assert tok.used(65.3) == 300 and tok.used(70.3) == 0      # 55 + 10.25; 58 + 2 + 10.25
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
        # 6,000 TPM without smooth admission: only the 10-s window (1,000) holds it.
        lim.configure("k", RateLimitConfig(tpm=6000, window_margin_s=0, burst_s=None, short_window_s=10))
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
    lim = RateLimiter()
    lim.configure("k", a)
    assert lim.snapshot()["k"]["burst_s"] == 1, "a tenth of the short window at once, not the default 6 s"


def test_against_a_real_server_enforcing_per_2_s_a_configured_short_window_draws_no_429():
    """Through HTTP on the real clock (no Ray): the fake OpenAI server allows TPM/30 in any 2 s and
    gives the per-minute limits in its headers. Four callers send calls for 3 s each run: with
    ``short_window_s=2`` none is rejected; without it, the limiter's 6-s burst draws 429s at once
    (the double disagrees with a per-minute reading)."""
    import httpx

    from raygrade.testing.fake_openai import FakeOpenAIServer

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 150}

    async def run(short_window_s):
        srv = FakeOpenAIServer(tpm=60_000, window_s=2, minute_headers=True).start()
        lim = RateLimiter()
        lim.configure("k", RateLimitConfig(tpm=60_000, rejected_requests_count=False, window_margin_s=0.25,
                                           short_window_s=short_window_s))
        statuses: list[int] = []
        try:
            async with httpx.AsyncClient(base_url=srv.base_url, timeout=10,
                                         headers={"Authorization": "Bearer sk-test"}) as http:
                end = asyncio.get_running_loop().time() + 3

                async def caller():
                    while asyncio.get_running_loop().time() < end:
                        r = await lim.acquire("k", 200)
                        resp = await http.post("/chat/completions", json=body)
                        statuses.append(resp.status_code)
                        usage = resp.json().get("usage") or {}
                        await lim.settle(r, Settlement(usage.get("total_tokens"), headers=dict(resp.headers),
                                                       outcome="ok" if resp.status_code == 200 else "rate_limited"))

                await asyncio.gather(*(caller() for _ in range(4)))
        finally:
            srv.stop()
        return statuses

    with_short = asyncio.run(run(2.0))
    assert with_short.count(429) == 0 and with_short.count(200) >= 30, with_short
    without = asyncio.run(run(None))
    assert without.count(429) > 0, without
