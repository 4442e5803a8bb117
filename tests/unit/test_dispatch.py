"""The batcher's exactly-once core (``raygrade.dispatch.JobDispatcher``) on a virtual clock.

A real :class:`JobStore` on a temporary SQLite file behind a real ``JobRegistryImpl`` (store
calls inline, no Ray), the same virtual clock for the store's leases and the dispatcher's
sleeps; graders are coroutines the tests control: they answer, hang, die or raise.
"""

from __future__ import annotations

import asyncio
import collections

import pytest
from support.clock import VirtualClock

from raygrade.batch import BatchOutcome, GradeBatch
from raygrade.config import StoreConfig
from raygrade.dispatch import GAUGE_INTERVAL_S, JobDispatcher, planning_failed
from raygrade.errors import OutputParseError
from raygrade.planner import batch_key
from raygrade.prompts import StudentWork
from raygrade.protocol import GradeResult, GradingJob, JobState, TextPage, Usage
from raygrade.serve.job_registry import JobRegistryImpl
from raygrade.store import JobStore

LEASE_S, POLL_S = 30.0, 1.0


class Metrics:
    """Records what the dispatcher reports."""

    def __init__(self):
        self.gauges: dict[tuple, float] = {}
        self.counters: collections.Counter = collections.Counter()
        self.observed: list[tuple[str, float, dict]] = []

    def set(self, name, value, tags):
        self.gauges[(name, tuple(sorted(tags.items())))] = value

    def inc(self, name, value, tags):
        self.counters[(name, tuple(sorted(tags.items())))] += value

    def observe(self, name, value, tags):
        self.observed.append((name, value, tags))


def make_job(n: int) -> GradingJob:
    return GradingJob.model_validate({
        "assessment": {"questions": [{"id": "q1", "prompt": "p1", "max_score": 2},
                                     {"id": "q2", "prompt": "p2", "max_score": 1}]},
        "submissions": [{"student_id": f"s{i}", "pages": [{"type": "text", "text": f"answer {i}"}]}
                        for i in range(n)]})


async def plan_two_per_batch(job_id: str, job: GradingJob, tenant: str):
    works = [StudentWork(student_id=s.student_id, alias=f"s{i + 1}", pages=[TextPage(text="x")], page_indices=[0],
                         question_ids=["q1", "q2"]) for i, s in enumerate(job.submissions)]
    batches = [GradeBatch(batch_id=batch_key(job_id, [w.student_id for w in works[k:k + 2]], ["q1", "q2"], None),
                          job_id=job_id, questions=job.assessment.questions, students=works[k:k + 2],
                          prompt_tokens_estimate=10, max_tokens=10, tenant=tenant)
               for k in range(0, len(works), 2)]
    return batches, [], "m"


def outcome(batch: GradeBatch, feedback: str = "ok") -> BatchOutcome:
    return BatchOutcome(batch_id=batch.batch_id, errors=[], calls=1, usage=Usage(prompt_tokens=5, completion_tokens=5),
                        results=[GradeResult(student_id=s.student_id, question_id=q, score=1,
                                             max_score=2 if q == "q1" else 1, feedback=feedback, confidence=0.9,
                                             pages=[0], model="m", batch_id=batch.batch_id, usage=Usage())
                                 for s in batch.students for q in s.question_ids])


class Grader:
    """A grader the test scripts: ``behaviour(batch, call_number)`` answers (an outcome),
    raises, or returns ``None`` to hang until :meth:`release`."""

    def __init__(self, behaviour=None, feedback="ok"):
        self.behaviour = behaviour or (lambda batch, n: outcome(batch, feedback))
        self.calls: collections.Counter = collections.Counter()
        self.in_flight = self.max_in_flight = 0
        self.released = asyncio.Event()
        self.feedback = feedback

    async def __call__(self, batch: GradeBatch):
        self.calls[batch.batch_id] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)
            result = self.behaviour(batch, self.calls[batch.batch_id])
            if result is None:
                await self.released.wait()
                result = outcome(batch, self.feedback)
            return result, f"replica-{self.feedback}"
        finally:
            self.in_flight -= 1

    def release(self):
        self.released.set()


@pytest.fixture
def clock():
    return VirtualClock(start=1_000_000.0)


@pytest.fixture
def store(tmp_path, clock):
    s = JobStore(f"sqlite:///{tmp_path}/jobs.db", clock=clock, blob_uri=str(tmp_path / "blobs"))
    yield s
    s.close()


@pytest.fixture
def registry(store, tmp_path):
    return JobRegistryImpl(StoreConfig(url=f"sqlite:///{tmp_path}/jobs.db"), namespace="raygrade", store=store)


def dispatcher(registry, clock, grader, *, limit=2, plan=plan_two_per_batch, metrics=None, owner=None, **store_cfg):
    cfg = StoreConfig(batch_lease_s=LEASE_S, poll_interval_s=POLL_S, **store_cfg)
    return JobDispatcher(cfg, limit, registry, plan, grader, metrics or Metrics(), tags={"namespace": "t"},
                         owner=owner, clock=clock, sleep=clock.sleep)


async def drive(task: asyncio.Task, clock: VirtualClock, step_s: float = POLL_S, max_steps: int = 500):
    """Advance the virtual clock until ``task`` is done (bounded)."""
    for _ in range(max_steps):
        if task.done():
            return task.result()
        await clock.advance(step_s)
    raise AssertionError("the job did not finish")


def test_every_item_graded_once_with_bounded_concurrency(store, registry, clock):
    async def main():
        status, _ = store.create_job(make_job(5))
        grader = Grader()
        d = dispatcher(registry, clock, grader, limit=2)
        await drive(d.submit(status.id), clock)
        return status.id, grader

    job_id, grader = asyncio.run(main())
    final = store.status(job_id)
    assert final.state == JobState.SUCCEEDED and final.progress.items_graded == 10
    assert sorted(grader.calls.values()) == [1, 1, 1] and grader.max_in_flight == 2
    assert len(store.results(job_id).results) == 10


def test_leases_taken_over_from_dead_batchers_do_not_count_as_lost_grader_calls(store, registry, clock):
    """A batch leased by two batchers that died (their leases expired) and then lost once by a
    grader is still re-dispatched and graded: only lost grader calls count toward
    ``max_batch_attempts`` (counting leases failed it with ``grader_error``, seen in the chaos test)."""
    def behaviour(batch, n):
        if batch.students[0].student_id == "s0" and n == 1:
            raise RuntimeError("replica died")
        return outcome(batch)

    async def main():
        status, _ = store.create_job(make_job(4))
        planned, _, _ = await plan_two_per_batch(status.id, make_job(4), "")
        store.record_plan(status.id, planned, [], "m")
        for dead in ("batcher-a", "batcher-b"):  # each leases every batch, then dies
            assert len(store.lease_batches(status.id, dead, LEASE_S, 5)) == 2
            clock.now += LEASE_S + 1
        grader = Grader(behaviour)
        await drive(dispatcher(registry, clock, grader, max_batch_attempts=3).submit(status.id), clock)
        return status.id, planned, grader

    job_id, planned, grader = asyncio.run(main())
    final = store.status(job_id)
    assert final.state == JobState.SUCCEEDED and final.progress.items_graded == 8, store.results(job_id).errors
    report = {b["id"]: b for b in store.batch_report(job_id)}
    s0 = planned[0].batch_id
    assert grader.calls[s0] == 2 and (report[s0]["attempts"], report[s0]["grader_losses"]) == (4, 1)


def test_a_lost_grader_is_re_dispatched_and_gives_up_after_max_attempts(store, registry, clock):
    def behaviour(batch, n):
        if batch.students[0].student_id == "s0" and n == 1:
            raise RuntimeError("replica died")          # lost once: graded on the second lease
        if batch.students[0].student_id == "s2":
            raise ConnectionError("replica died again")  # lost every time
        return outcome(batch)

    async def main():
        status, _ = store.create_job(make_job(4))
        grader = Grader(behaviour)
        await drive(dispatcher(registry, clock, grader, max_batch_attempts=3).submit(status.id), clock)
        return status.id, grader

    job_id, grader = asyncio.run(main())
    report = {b["id"]: b for b in store.batch_report(job_id)}
    planned, _, _ = asyncio.run(plan_two_per_batch(job_id, make_job(4), ""))
    by_student = {b.students[0].student_id: b.batch_id for b in planned}
    assert grader.calls[by_student["s0"]] == 2 and report[by_student["s0"]]["attempts"] == 2
    assert grader.calls[by_student["s2"]] == 3 and report[by_student["s2"]]["attempts"] == 3
    final = store.status(job_id)
    assert final.state == JobState.PARTIAL and (final.progress.items_graded, final.progress.items_failed) == (4, 4)
    errors = store.results(job_id).errors
    assert sorted(s for e in errors for s in e.student_ids) == ["s2", "s3"]
    assert {e.type for e in errors} == {"grader_error"} and all("3 times: ConnectionError" in e.message for e in errors)


def test_an_error_inside_the_grader_fails_the_items_without_re_dispatch(store, registry, clock):
    def behaviour(batch, n):
        if batch.students[0].student_id == "s0":
            raise OutputParseError("the model's answer did not match the schema")
        return outcome(batch)

    async def main():
        status, _ = store.create_job(make_job(4))
        grader = Grader(behaviour)
        await drive(dispatcher(registry, clock, grader).submit(status.id), clock)
        return status.id, grader

    job_id, grader = asyncio.run(main())
    assert sorted(grader.calls.values()) == [1, 1]
    errors = store.results(job_id).errors
    assert sorted((e.type, s) for e in errors for s in e.student_ids) == [("output_parse_error", "s0"),
                                                                          ("output_parse_error", "s1")]


def test_a_dead_dispatchers_batches_are_re_dispatched_when_their_lease_expires(store, registry, clock):
    async def main():
        status, _ = store.create_job(make_job(4))
        hung = Grader(lambda b, n: None, feedback="dead")
        dead = dispatcher(registry, clock, hung, owner="dead")
        task = dead.submit(status.id)
        await clock.settle()
        assert hung.in_flight == 2 and len(dead.leased) == 2
        task.cancel()  # the dead batcher: its leases are neither renewed nor released
        await clock.settle()

        grader = Grader(feedback="alive")
        alive = dispatcher(registry, clock, grader, owner="alive")
        second = alive.submit(status.id)
        await clock.advance(LEASE_S - 2 * POLL_S)
        assert not grader.calls and not second.done()  # leases still valid: nothing stolen
        await drive(second, clock)
        # The dead batcher's grader answers late: its write is dropped, grades stay as written.
        late = [outcome(b, "dead") for b in (await plan_two_per_batch(status.id, make_job(4), ""))[0]]
        for o in late:
            await registry.complete_batch(status.id, o, "replica-dead")
        return status.id, grader

    job_id, grader = asyncio.run(main())
    results = store.results(job_id).results
    assert len(results) == 8 and {r.feedback for r in results} == {"alive"}
    assert sorted(grader.calls.values()) == [1, 1]
    assert store.replicas(job_id) == {"replica-alive": 2}


def test_leases_are_renewed_while_a_slow_grader_works(store, registry, clock):
    async def main():
        status, _ = store.create_job(make_job(2))
        slow = Grader(lambda b, n: None, feedback="slow")
        owner = dispatcher(registry, clock, slow, owner="slow")
        control = asyncio.ensure_future(owner.control_loop())  # starts the job and renews its lease
        await clock.advance(POLL_S)  # a queued job is found once a poll interval old
        assert slow.in_flight == 1

        other = Grader(feedback="other")
        rival = dispatcher(registry, clock, other, owner="rival")
        rival_task = rival.submit(status.id)
        await clock.advance(3 * LEASE_S)  # three lease periods: renewed every poll, never expired
        assert not other.calls
        slow.release()
        await drive(rival_task, clock)
        control.cancel()
        return status.id

    job_id = asyncio.run(main())
    assert store.status(job_id).state == JobState.SUCCEEDED
    assert store.replicas(job_id) == {"replica-slow": 1}


def test_a_job_that_cannot_be_planned_fails_with_the_error_type_only(store, registry, clock):
    async def bad_plan(job_id, job, tenant):
        try:
            raise ValueError("answer 0 quoted in an exception")
        except ValueError as exc:
            raise planning_failed(exc) from exc

    async def main():
        status, _ = store.create_job(make_job(2))
        metrics = Metrics()
        await drive(dispatcher(registry, clock, Grader(), plan=bad_plan, metrics=metrics).submit(status.id), clock)
        return status.id, metrics

    job_id, metrics = asyncio.run(main())
    final = store.status(job_id)
    assert final.state == JobState.FAILED
    errors = store.results(job_id).errors
    assert {(e.type, e.message) for e in errors} == {("planning_error", "planning failed: ValueError")}
    assert [m[0] for m in metrics.observed] == ["raygrade_job_duration_seconds"]


def test_a_failing_store_interrupts_the_job_and_the_control_loop_resumes_it(store, registry, clock):
    class Flaky:
        """The registry, unreachable for its first lease call (a restart under way)."""

        def __init__(self):
            self.failures = 1

        def __getattr__(self, name):
            return getattr(registry, name)

        def _fail_once(self):
            if self.failures:
                self.failures -= 1
                raise ConnectionError("registry restarting")

        async def lease_batches(self, *args):
            self._fail_once()
            return await registry.lease_batches(*args)

        async def complete_and_lease(self, job_id, outcome, replica, *lease):
            counts = await registry.complete_batch(job_id, outcome, replica)  # the batch written, its lease lost
            self._fail_once()
            return counts, await registry.lease_batches(job_id, *lease)

    async def main():
        status, _ = store.create_job(make_job(3))
        grader, metrics = Grader(), Metrics()
        d = dispatcher(Flaky(), clock, grader, metrics=metrics)
        first = d.submit(status.id)
        await clock.settle()
        assert first.done() and store.status(status.id).state == JobState.RUNNING  # planned, not failed
        control = asyncio.ensure_future(d.control_loop())
        for _ in range(10):
            await clock.advance(POLL_S)
            if store.status(status.id).state.terminal:
                break
        control.cancel()
        return status.id, grader, metrics

    job_id, grader, metrics = asyncio.run(main())
    assert store.status(job_id).state == JobState.SUCCEEDED and sorted(grader.calls.values()) == [1, 1]
    assert metrics.gauges[("raygrade_jobs", (("namespace", "t"), ("state", "running")))] == 1


def test_gauges_are_read_every_gauge_interval(store, registry, clock):
    reads = []

    class Counting:
        def __getattr__(self, name):
            return getattr(registry, name)

        async def gauges(self):
            reads.append(clock())
            return await registry.gauges()

    async def main():
        d = dispatcher(Counting(), clock, Grader())
        control = asyncio.ensure_future(d.control_loop())
        await clock.advance(3 * GAUGE_INTERVAL_S)
        control.cancel()

    asyncio.run(main())
    assert len(reads) == 4 and all(b - a >= GAUGE_INTERVAL_S for a, b in zip(reads, reads[1:]))


class CountingRegistry:
    """The registry's methods, counted per name (each is one round trip through Serve in a deployment)."""

    def __init__(self, registry):
        self._registry = registry
        self.calls: collections.Counter = collections.Counter()

    def __getattr__(self, name):
        self.calls[name] += 1
        return getattr(self._registry, name)


@pytest.mark.parametrize(("students", "expected"), [
    # One batch: its status and body, the plan with the first lease, the grade with the finish.
    (2, {"status_and_job": 1, "plan_and_lease": 1, "complete_and_finish": 1}),
    # Five batches, two at a time: each completion leases the next batch into its slot in the same
    # call (the fourth finds none left), the last one finishing the job: one call per batch.
    (10, {"status_and_job": 1, "plan_and_lease": 1, "complete_and_lease": 4, "complete_and_finish": 1}),
])
def test_a_small_job_takes_three_registry_calls_and_a_large_one_one_per_batch(store, registry, clock, students,
                                                                              expected):
    async def main():
        status, _ = store.create_job(make_job(students))
        counting = CountingRegistry(registry)
        d = dispatcher(counting, clock, Grader(), limit=2)
        assert await drive(d.submit(status.id), clock) is None
        return status.id, counting.calls

    job_id, calls = asyncio.run(main())
    assert dict(calls) == expected
    final = store.status(job_id)
    assert final.state == JobState.SUCCEEDED and final.progress.items_graded == 2 * students
    assert len(store.results(job_id).results) == 2 * students


def test_a_slow_grader_costs_no_extra_store_calls_when_the_run_holds_every_batch(store, registry, clock):
    """Polls while the job's only batch is graded (five poll intervals) do not ask the store for
    batches: this run recorded the plan and leased all of it."""
    async def main():
        status, _ = store.create_job(make_job(2))
        counting = CountingRegistry(registry)

        async def slow(batch):
            await clock.sleep(5 * POLL_S)
            return outcome(batch), "replica-slow"

        d = dispatcher(counting, clock, slow, limit=2)
        assert await drive(d.submit(status.id), clock, step_s=POLL_S / 2) is None
        return status.id, counting.calls

    job_id, calls = asyncio.run(main())
    assert dict(calls) == {"status_and_job": 1, "plan_and_lease": 1, "complete_and_finish": 1}
    assert store.status(job_id).state == JobState.SUCCEEDED


def test_a_dead_dispatchers_expired_lease_is_taken_while_the_run_grades_another_batch(store, registry, clock):
    """A run that did not record the plan keeps looking, at every poll, for batches whose lease
    expired: the dead dispatcher's batch is graded while this run's own is still in flight."""
    async def main():
        status, _ = store.create_job(make_job(4))
        hung = Grader(lambda b, n: None, feedback="dead")
        dead = dispatcher(registry, clock, hung, owner="dead", limit=1)
        task = dead.submit(status.id)
        await clock.settle()
        assert hung.in_flight == 1
        task.cancel()  # its one lease is neither renewed nor released
        await clock.settle()

        graded_at: dict[str, float] = {}

        async def slow(batch):
            await clock.sleep(3 * LEASE_S)
            graded_at[batch.batch_id] = clock()
            return outcome(batch, "alive"), "replica-alive"

        alive = dispatcher(registry, clock, slow, owner="alive")
        job_task = alive.submit(status.id)
        control = asyncio.ensure_future(alive.control_loop())  # renews the leases of the batches it grades
        await drive(job_task, clock)
        control.cancel()
        return status.id, graded_at

    job_id, graded_at = asyncio.run(main())
    first, second = sorted(graded_at.values())
    assert second - first <= LEASE_S + 2 * POLL_S  # taken at its lease's expiry, not after the first batch
    assert {r.feedback for r in store.results(job_id).results} == {"alive"}


def test_the_control_loop_leaves_a_new_queued_job_to_its_nudge_for_one_poll_interval(store, registry, clock):
    """A job just recorded is on its way with the ingress's nudge: the poll does not start it
    too (a job found by the poll is read back from the store); a job whose nudge was lost is
    started one poll later, and a running job (a restarted batcher's) at once."""
    async def main():
        running, _ = store.create_job(make_job(2))
        store.record_plan(running.id, (await plan_two_per_batch(running.id, make_job(2), ""))[0], [], "m")
        clock.now += POLL_S / 2
        fresh, _ = store.create_job(make_job(2))
        d = dispatcher(registry, clock, Grader())
        await d.control_step()
        first = set(d._jobs)
        clock.now += POLL_S
        await d.control_step()
        for job_id in list(d._jobs):
            await drive(d._jobs[job_id], clock)
        return running.id, fresh.id, first

    running, fresh, first = asyncio.run(main())
    assert first == {running}
    assert store.status(fresh).state == JobState.SUCCEEDED and store.status(running).state == JobState.SUCCEEDED


def test_a_job_handed_over_by_the_ingress_is_planned_without_reading_it_back(store, registry, clock):
    async def main():
        job = make_job(2)
        status, _ = store.create_job(job)
        cancelled, _ = store.create_job(job)
        store.cancel(cancelled.id)  # cancelled between its POST and the nudge
        counting = CountingRegistry(registry)
        d = dispatcher(counting, clock, Grader(), limit=2)
        await drive(d.submit(status.id, known=(store.get_job(status.id), "default")), clock)
        first = dict(counting.calls)
        await drive(d.submit(cancelled.id, known=(store.get_job(cancelled.id), "default")), clock)
        return status.id, cancelled.id, first

    job_id, cancelled_id, calls = asyncio.run(main())
    assert calls == {"plan_and_lease": 1, "complete_and_finish": 1}
    assert store.status(job_id).state == JobState.SUCCEEDED
    assert store.status(cancelled_id).state == JobState.CANCELLED and not store.results(cancelled_id).results


def test_grader_calls_across_jobs_stay_within_the_grader_slots(store, registry, clock):
    """Each job may have ``max_concurrent_batches`` in flight, but all jobs together no more than
    the grader slots (the Grader replicas' capacity): the rest wait here, in order, not in Serve's router."""
    async def main():
        ids = [store.create_job(make_job(8))[0].id for _ in range(3)]  # 3 jobs × 4 batches
        grader = Grader()
        d = dispatcher(registry, clock, grader, limit=4)
        d.grader_slots.resize(3)
        for task in [d.submit(i) for i in ids]:
            await drive(task, clock)
        return ids, grader

    ids, grader = asyncio.run(main())
    assert grader.max_in_flight == 3 and sum(grader.calls.values()) == 12
    assert all(store.status(i).state == JobState.SUCCEEDED for i in ids)
