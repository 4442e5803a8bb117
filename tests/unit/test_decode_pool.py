"""The decode pool's turns: a tenant with a thousand pages queued does not make another wait."""

from __future__ import annotations

import threading

import pytest

from raygrade.decode_pool import FairPool


def test_tenants_take_turns_so_a_late_small_job_waits_for_one_task_not_all():
    pool = FairPool(1, name="test-fair")
    started, gate, order = threading.Event(), threading.Event(), []

    def task(name: str) -> str:
        if name == "a0":
            started.set()
            gate.wait(10)
        order.append(name)
        return name

    first = pool.submit("a", task, "a0")  # holds the only thread until the gate opens
    assert started.wait(10)
    many = [pool.submit("a", task, f"a{i}") for i in range(1, 6)]
    small = [pool.submit("b", task, f"b{i}") for i in range(2)]
    gate.set()
    assert [f.result(10) for f in [first, *many, *small]] == ["a0", "a1", "a2", "a3", "a4", "a5", "b0", "b1"]
    assert order == ["a0", "a1", "b0", "a2", "b1", "a3", "a4", "a5"]


def test_map_returns_results_in_order_and_raises_the_first_error():
    pool = FairPool(2, name="test-fair")
    assert pool.map("t", lambda x: x * x, range(6)) == [0, 1, 4, 9, 16, 25]

    def bad(x: int) -> int:
        if x == 3:
            raise ValueError("page 3 does not decode")
        return x

    with pytest.raises(ValueError, match="page 3"):
        pool.map("t", bad, range(5))
    assert pool.map("t", bad, [1, 2]) == [1, 2]  # the threads live on after a task failed
