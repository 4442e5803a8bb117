"""Concurrent calls grouped into one (``raygrade.grouped``), and the ingress's use of it
(``raygrade.serve.accept.JobAcceptor`` over a real ``JobRegistryImpl`` on a temporary SQLite
store, no Ray): each job recorded on its own and answered with its own result or error."""

from __future__ import annotations

import asyncio
import functools

import pytest

from raygrade.config import StoreConfig
from raygrade.errors import ConflictError, InvalidRequestError, NotFoundError, QuotaExceededError
from raygrade.grouped import GroupedCall
from raygrade.protocol import GradingJob, TenantQuota
from raygrade.serve.accept import JobAcceptor, NewJob
from raygrade.serve.job_registry import JobRegistryImpl
from raygrade.serve.registry_part import create_jobs
from raygrade.store import JobStore


def aio(test):
    """Run an ``async def`` test on a fresh event loop (fixtures pass through)."""
    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return run


async def settle() -> None:
    """Let every task that can run do so (a caller's task, then the sender's)."""
    for _ in range(5):
        await asyncio.sleep(0)


class Recorder:
    """A grouped function the test controls: each call waits until the test releases it."""

    def __init__(self, answer=lambda xs: [x * 10 for x in xs]):
        self.groups: list[list[int]] = []
        self.answer = answer
        self.gate = asyncio.Event()

    async def __call__(self, xs):
        self.groups.append(list(xs))
        await self.gate.wait()
        return self.answer(xs)


@aio
async def test_a_lone_call_goes_at_once_and_arrivals_meanwhile_go_together():
    rec = Recorder()
    grouped = GroupedCall(rec, max_items=3)
    first = asyncio.create_task(grouped(1))
    await settle()
    assert rec.groups == [[1]]  # no timer: sent as soon as it came
    rest = [asyncio.create_task(grouped(x)) for x in (2, 3, 4, 5, 6)]
    await settle()
    assert rec.groups == [[1]]  # one call in flight: the others queue behind it
    rec.gate.set()
    assert await asyncio.gather(first, *rest) == [10, 20, 30, 40, 50, 60]
    assert rec.groups == [[1], [2, 3, 4], [5, 6]] and grouped.calls == 3  # at most max_items per call


@aio
async def test_each_caller_gets_its_own_error_and_a_failed_call_reaches_only_its_group():
    def answer(xs):
        if 9 in xs:
            raise RuntimeError("store down")
        return [ValueError(f"bad {x}") if x % 2 else x for x in xs]

    rec = Recorder(answer)
    rec.gate.set()
    grouped = GroupedCall(rec, max_items=8)
    results = await asyncio.gather(*(grouped(x) for x in (2, 3, 4)), return_exceptions=True)
    assert results[0] == 2 and results[2] == 4 and isinstance(results[1], ValueError) and "bad 3" in str(results[1])
    with pytest.raises(RuntimeError, match="store down"):
        await grouped(9)
    assert await grouped(6) == 6  # the next group is unaffected


@aio
async def test_a_call_that_returns_the_wrong_count_fails_its_group():
    async def short(xs):
        return xs[:-1]

    grouped = GroupedCall(short)
    results = await asyncio.gather(grouped(1), grouped(2), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)


@aio
async def test_a_cancelled_caller_leaves_the_others_their_results():
    rec = Recorder()
    grouped = GroupedCall(rec)
    first = asyncio.create_task(grouped(1))
    await settle()
    waiting = [asyncio.create_task(grouped(x)) for x in (2, 3)]
    await settle()
    waiting[0].cancel()
    rec.gate.set()
    assert await first == 10 and await waiting[1] == 30
    assert rec.groups == [[1], [2, 3]]  # the cancelled caller's item was still carried


def test_bounds_are_checked():
    async def f(xs):
        return xs

    with pytest.raises(ValueError):
        GroupedCall(f, max_items=0)


# -- the ingress's acceptor over a real registry ------------------------------------------------

class Handle:
    """A deployment handle's ``method.remote(...)`` → an awaitable, calling the object in-process."""

    def __init__(self, target):
        self._target = target

    def __getattr__(self, name):
        method = getattr(self._target, name)

        class Remote:
            @staticmethod
            def remote(*args, **kwargs):
                return method(*args, **kwargs)

        return Remote


class Batcher:
    def __init__(self, fail: bool = False):
        self.submitted: list[list[tuple]] = []
        self.fail = fail

    async def submit_many(self, jobs):
        if self.fail:
            raise ConnectionError("batcher gone")
        self.submitted.append(jobs)


def job(text: str = "x", webhook: str | None = None) -> GradingJob:
    return GradingJob.model_validate({
        "assessment": {"questions": [{"id": "q1", "prompt": "p", "max_score": 2}]},
        "submissions": [{"student_id": "s1", "pages": [{"type": "text", "text": text}]}],
        "options": {"webhook_url": webhook} if webhook else {}})


def new(j: GradingJob, key: str | None = None, tenant: str = "default") -> NewJob:
    return NewJob(j, key, tenant, {}, None, nudge_with_job=True)


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.delenv("RAYGRADE_WEBHOOK_SECRET", raising=False)
    store = JobStore(f"sqlite:///{tmp_path}/jobs.db")
    yield JobRegistryImpl(StoreConfig(url=f"sqlite:///{tmp_path}/jobs.db"), store=store), store
    store.close()


@aio
async def test_concurrent_submissions_are_recorded_in_one_call_each_on_its_own(registry):
    reg, store = registry
    store.set_quota("capped", TenantQuota(max_active_jobs=1))
    batcher = Batcher()
    acceptor = JobAcceptor(Handle(reg), Handle(batcher))
    subs = [new(job("a"), key="k1"), new(job("b"), key="k1"),  # the same key, another body: 409
            new(job("a"), key="k1"),  # a replay of the first: the same job, not created again
            new(job("c")), new(job("d", webhook="https://example.com/h")),  # webhooks not enabled here
            new(job("e"), tenant="capped"), new(job("f"), tenant="capped")]  # the second is over the quota
    results = await asyncio.gather(*(acceptor.accept(n) for n in subs), return_exceptions=True)
    assert acceptor.calls <= 2  # the first alone, the rest together
    (first, created1), bad_key, (replay, created2), (third, created3), hook, (capped, created4), over = results
    assert created1 and not created2 and replay.id == first.id and created3 and created4
    assert isinstance(bad_key, ConflictError) and isinstance(hook, InvalidRequestError)
    assert isinstance(over, QuotaExceededError)
    # Each created job recorded once and nudged once, with its tenant and the job as stored.
    nudged = [n for call in batcher.submitted for n in call]
    assert sorted(n[0] for n in nudged) == sorted([first.id, third.id, capped.id])
    assert {n[0]: n[2] for n in nudged}[capped.id] == "capped"
    assert all(n[1] is not None and n[3] == {} for n in nudged)
    for status in (first, third, capped):
        assert store.status(status.id).state.value == "queued"


@aio
async def test_a_batcher_that_cannot_be_reached_loses_no_accepted_job(registry):
    reg, store = registry
    acceptor = JobAcceptor(Handle(reg), Handle(Batcher(fail=True)))
    results = await asyncio.gather(*(acceptor.accept(new(job(str(i)))) for i in range(3)))
    assert all(created for _, created in results)
    assert sorted(store.unfinished_jobs("raygrade")) == sorted(s.id for s, _ in results)


class CountingHandle(Handle):
    """:class:`Handle`, counting the calls of each method."""

    def __init__(self, target):
        super().__init__(target)
        self.count: dict[str, int] = {}

    def __getattr__(self, name):
        self.count[name] = self.count.get(name, 0) + 1
        return super().__getattr__(name)


@aio
async def test_a_batchers_registry_calls_of_several_jobs_go_in_one_call_each_with_its_own_result(registry):
    from raygrade.serve.batcher import HandleCalls
    from raygrade.serve.registry_short_path import GROUPED_CALLS

    reg, store = registry
    handle = CountingHandle(reg)
    calls = HandleCalls(handle, GROUPED_CALLS)
    (a, _), (b, _) = store.create_job(job("a")), store.create_job(job("b"))
    results = await asyncio.gather(
        calls.plan_and_lease(a.id, [], [], "m", "owner", 30.0, 1),
        calls.plan_and_lease("job_missing", [], [], "m", "owner", 30.0, 1),
        calls.plan_and_lease(b.id, [], [], "m", "owner", 30.0, 1),
        calls.complete_batch(b.id, "not an outcome"),  # fails inside the store, not with a RaygradeError
        return_exceptions=True)
    assert handle.count == {"call_many": 1}  # created once; then every call went through it
    assert results[0] == [] and results[2] == []  # planned (no batches): nothing to lease
    assert isinstance(results[1], NotFoundError)
    assert isinstance(results[3], RuntimeError) and str(results[3]) == "complete_batch failed: AttributeError"
    assert store.status(a.id).state.value == store.status(b.id).state.value == "running"
    assert calls.gauges.__name__ == "call"  # a method not grouped goes on its own
    with pytest.raises(ValueError, match="cancel"):  # only the grouped methods
        await reg.call_many([("cancel", (a.id,), {}, {})])


class Direct:
    """``JobAcceptor``'s ``direct`` over ``store`` (as :meth:`DirectStore.create_jobs` on
    PostgreSQL): records what it is given, or answers ``None`` (cannot write here) or fails."""

    def __init__(self, store: JobStore | None, fail: Exception | None = None):
        self.store, self.fail, self.given = store, fail, []

    async def __call__(self, news):
        self.given.append([n.job.submissions[0].pages[0].text for n in news])
        if self.fail is not None:
            raise self.fail
        if self.store is None:
            return None
        return create_jobs(self.store, "raygrade", [n.request for n in news])


@aio
async def test_jobs_recorded_by_the_ingress_itself_skip_the_registry_except_those_with_a_webhook(registry):
    reg, store = registry
    handle, batcher, direct = CountingHandle(reg), Batcher(), Direct(store)
    acceptor = JobAcceptor(handle, Handle(batcher), direct=direct)
    subs = [new(job("a"), key="k1"), new(job("b"), key="k1"), new(job("c")),
            new(job("d", webhook="https://example.com/h"))]  # webhooks not enabled: the registry refuses it
    results = await asyncio.gather(*(acceptor.accept(n) for n in subs), return_exceptions=True)
    (first, created), conflict, (third, created3), hook = results
    assert created and created3 and isinstance(conflict, ConflictError) and isinstance(hook, InvalidRequestError)
    # The ingress recorded every job without a webhook; only the webhook's job went to the registry.
    assert sorted(t for g in direct.given for t in g) == ["a", "b", "c"] and acceptor.direct_jobs == 3
    assert handle.count == {"create_many": 1}
    nudged = sorted(n[0] for call in batcher.submitted for n in call)
    assert nudged == sorted([first.id, third.id])
    assert {store.status(s.id).state.value for s in (first, third)} == {"queued"}


@aio
async def test_where_the_ingress_cannot_write_the_registry_records_every_job(registry):
    reg, store = registry
    handle, direct = CountingHandle(reg), Direct(None)  # SQLite, or a store not opened yet
    acceptor = JobAcceptor(handle, Handle(Batcher()), direct=direct)
    (status, created), = await asyncio.gather(acceptor.accept(new(job("a"))))
    assert created and acceptor.direct_jobs == 0 and handle.count == {"create_many": 1}
    assert store.status(status.id).state.value == "queued"


@aio
async def test_a_failed_direct_write_fails_its_group_and_is_not_sent_to_the_registry_again(registry):
    reg, store = registry
    handle = CountingHandle(reg)
    acceptor = JobAcceptor(handle, Handle(Batcher()), direct=Direct(store, fail=ConnectionError("server gone")))
    results = await asyncio.gather(*(acceptor.accept(new(job(t))) for t in "ab"), return_exceptions=True)
    # Its transaction may have committed: retried through the registry, a job without a key could
    # be recorded twice. The caller retries (with its idempotency key).
    assert all(isinstance(r, ConnectionError) for r in results) and handle.count == {}
    assert store.unfinished_jobs("raygrade") == []
