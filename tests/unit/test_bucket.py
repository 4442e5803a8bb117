"""Token-bucket arithmetic with a fake clock (no Ray, no real time)."""

import asyncio

import pytest

from raygrade.ratelimit.bucket import RateLimiter, TokenBucket


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t

    async def sleep(self, s):
        self.t += s


def test_requests_per_minute():
    clock = FakeClock()
    b = TokenBucket(rpm=60, tpm=None, clock=clock)
    for _ in range(60):
        assert b.try_reserve(0) == 0.0
    wait = b.try_reserve(0)
    assert wait == pytest.approx(1.0)  # refills 1 request per second
    clock.t += 1.0
    assert b.try_reserve(0) == 0.0


def test_tokens_per_minute_and_wait_time():
    clock = FakeClock()
    b = TokenBucket(rpm=None, tpm=6000, clock=clock)  # 100 tokens/s
    assert b.try_reserve(5000) == 0.0
    assert b.available() == (None, pytest.approx(1000))
    assert b.try_reserve(1500) == pytest.approx(5.0)  # needs 500 more at 100/s
    assert b.available()[1] == pytest.approx(1000), "a refused reservation takes nothing"
    clock.t += 5.0
    assert b.try_reserve(1500) == 0.0


def test_settle_refunds_unused_and_charges_overrun():
    clock = FakeClock()
    b = TokenBucket(rpm=None, tpm=10_000, clock=clock)
    b.try_reserve(4000)                     # prompt + max_tokens estimate
    b.settle(reserved_tokens=4000, actual_tokens=1500)
    assert b.available()[1] == pytest.approx(8500)
    b.settle(reserved_tokens=0, actual_tokens=9000)   # overrun beyond the estimate
    assert b.available()[1] == pytest.approx(-500)
    assert b.try_reserve(1) == pytest.approx(501 / (10_000 / 60))


def test_refund_never_exceeds_capacity():
    clock = FakeClock()
    b = TokenBucket(rpm=None, tpm=1000, clock=clock)
    b.settle(reserved_tokens=5000, actual_tokens=0)
    assert b.available()[1] == 1000


def test_request_larger_than_capacity_waits_for_full_bucket_then_goes_through():
    clock = FakeClock()
    b = TokenBucket(rpm=None, tpm=600, clock=clock)
    b.try_reserve(300)
    wait = b.try_reserve(2000)
    assert wait == pytest.approx(30.0)   # until the bucket is full again
    clock.t += wait
    assert b.try_reserve(2000) == 0.0
    assert b.available()[1] == pytest.approx(-1400)


def test_negative_tokens_rejected():
    with pytest.raises(ValueError):
        TokenBucket(rpm=1, tpm=1).try_reserve(-1)


def test_rate_limiter_waits_fifo_and_settles_once():
    clock = FakeClock()
    lim = RateLimiter(clock=clock, sleep=clock.sleep)
    lim.configure("p/m", rpm=2, tpm=None)

    async def run():
        order = []

        async def call(i):
            r = await lim.acquire("p/m", 10)
            order.append((i, clock.t))
            await lim.settle(r.id, 5)
            await lim.settle(r.id, 5)  # settling twice is harmless

        await asyncio.gather(*(call(i) for i in range(4)))
        return order

    order = asyncio.run(run())
    assert [i for i, _ in order] == [0, 1, 2, 3]
    assert [t - 1000.0 for _, t in order] == pytest.approx([0, 0, 30, 60])
    assert lim.admitted_requests == 4 and lim.admitted_tokens == 20


def test_unconfigured_key_raises():
    with pytest.raises(KeyError):
        asyncio.run(RateLimiter().acquire("nope", 1))


def test_reconfigure_same_limits_keeps_state():
    clock = FakeClock()
    lim = RateLimiter(clock=clock, sleep=clock.sleep)
    lim.configure("k", 1, None)
    asyncio.run(lim.acquire("k", 0))
    lim.configure("k", 1, None)
    assert lim.snapshot()["k"]["requests_available"] == pytest.approx(0)
