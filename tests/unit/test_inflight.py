"""GraderSlots: a bound on grader calls in flight across jobs, first come, first served."""

from __future__ import annotations

import asyncio

import pytest

from raygrade.inflight import GraderSlots


def test_holders_are_bounded_and_waiters_enter_in_the_order_they_came():
    async def main():
        slots, order, release = GraderSlots(2), [], asyncio.Event()

        async def hold(name: str):
            async with slots:
                order.append(name)
                await release.wait()

        tasks = []
        for name in "abcde":
            tasks.append(asyncio.create_task(hold(name)))
            await asyncio.sleep(0)  # each one queued before the next arrives
        assert order == ["a", "b"] and slots.busy == 2 and slots.waiting == 3
        release.set()
        await asyncio.gather(*tasks)
        return order, slots

    order, slots = asyncio.run(main())
    assert order == list("abcde") and slots.busy == 0 and slots.waiting == 0


def test_a_newcomer_never_passes_a_waiter_and_a_larger_bound_lets_waiters_in():
    async def main():
        slots, order = GraderSlots(1), []
        gate = asyncio.Event()

        async def hold(name: str, until: asyncio.Event | None = None):
            async with slots:
                order.append(name)
                if until is not None:
                    await until.wait()

        first = asyncio.create_task(hold("first", gate))
        await asyncio.sleep(0)
        waiters = [asyncio.create_task(hold(n, gate)) for n in ("w1", "w2")]
        await asyncio.sleep(0)
        slots.resize(3)  # two more replicas running: both waiters enter at once
        await asyncio.sleep(0)
        assert order == ["first", "w1", "w2"] and slots.busy == 3
        slots.resize(1)  # fewer replicas: holders keep their slots; newcomers wait for the bound
        late = asyncio.create_task(hold("late"))
        await asyncio.sleep(0)
        assert slots.waiting == 1 and "late" not in order
        gate.set()
        await asyncio.gather(first, *waiters, late)
        return order, slots

    order, slots = asyncio.run(main())
    assert order == ["first", "w1", "w2", "late"] and slots.busy == 0


@pytest.mark.parametrize("when", ["waiting", "just granted"])
def test_a_cancelled_waiter_leaves_no_slot_taken(when):
    async def main():
        slots, release = GraderSlots(1), asyncio.Event()

        async def hold():
            async with slots:
                await release.wait()

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0)
        waiter = asyncio.create_task(hold())
        await asyncio.sleep(0)
        if when == "just granted":  # a slot handed to the waiter, which is cancelled before it runs
            slots.resize(2)
            assert slots.busy == 2
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert slots.busy == 1 and slots.waiting == 0  # the holder's slot only
        release.set()
        await holder
        async with slots:  # every slot free again
            return slots.busy

    assert asyncio.run(main()) == 1


def test_no_bound_until_one_is_set():
    async def main():
        slots = GraderSlots()
        async with slots, slots, slots:
            return slots.busy

    assert asyncio.run(main()) == 3
