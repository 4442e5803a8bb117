"""``JobDispatcher``: the batcher's exactly-once core, a plain class (no Ray).

It drives every unfinished job in the durable store to completion: plans a queued job
(``queued → running``), leases its batches with bounded concurrency, sends each to a grader
and writes the outcome back; it renews the leases of the batches it is grading, releases a
batch whose grader was lost (re-dispatched at once, up to ``max_batch_attempts`` lost calls) and
re-dispatches, when their lease expires, batches leased by a dispatcher that died. It acts
only on what the store says, so a restarted dispatcher (or a second one) resumes every job
where it stood, and the store's compare-and-swap completion writes each grade once
(:meth:`raygrade.store.JobStore.complete_batch`).

Its I/O and clock are injected, as :class:`raygrade.ratelimit.limiter.RateLimiter`'s are:
``registry`` has :class:`raygrade.serve.job_registry.JobRegistryImpl`'s async methods (the Serve
wrapper :class:`raygrade.serve.batcher.Batcher` passes its deployment handle's), ``plan`` reads
and plans a job, ``grade`` grades one batch, ``sleep`` waits; unit tests drive it on a virtual
clock with a store on a temporary SQLite file (``tests/unit/test_dispatch.py``).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from raygrade.batch import BatchOutcome, GradeBatch, students_error
from raygrade.config import StoreConfig
from raygrade.errors import PlanningError, RaygradeError, raygrade_cause
from raygrade.inflight import GraderSlots
from raygrade.protocol import GradingErrorItem, GradingJob, JobStatus
from raygrade.serve.logs import ids
from raygrade.tracing import extract, new_trace, span

if TYPE_CHECKING:
    from opentelemetry import context as otel_context

logger = logging.getLogger(f"ray.serve.{__name__}")

#: Seconds between reads of the store's job and queue gauges (Ray exports metrics every few
#: seconds anyway; the control loop itself polls every ``poll_interval_s``).
GAUGE_INTERVAL_S = 5.0

#: ``plan(job_id, job, tenant)`` → the job's batches, the students' reading and planning errors,
#: and the model that grades it.
PlanFn = Callable[[str, GradingJob, str], Awaitable[tuple[list[GradeBatch], list[GradingErrorItem], str | None]]]
#: ``grade(batch)`` → the batch's outcome and the grader replica that produced it (or ``None``).
GradeFn = Callable[[GradeBatch], Awaitable[tuple[BatchOutcome, str | None]]]


class Metrics(Protocol):
    """Where the dispatcher reports (:class:`raygrade.metrics.Recorder` in a deployment)."""

    def set(self, name: str, value: float, tags: dict[str, str]) -> None: ...
    def inc(self, name: str, value: float, tags: dict[str, str]) -> None: ...
    def observe(self, name: str, value: float, tags: dict[str, str]) -> None: ...


class JobFailed(Exception):
    """A job-fatal error from ``plan`` (retrying would fail the same way): the job is failed
    with ``error``'s type and message (:func:`planning_failed` makes one of any exception)."""

    def __init__(self, error: RaygradeError):
        super().__init__(error.message)
        self.error = error


def planning_failed(exc: Exception) -> JobFailed:
    """``exc`` from planning as a :class:`JobFailed`: a :class:`RaygradeError` as it is, any
    other exception as a ``PlanningError`` naming only its type (its message may quote a page)."""
    return JobFailed(exc if isinstance(exc, RaygradeError) else PlanningError(f"planning failed: {type(exc).__name__}"))


class _Run:
    """One run of a job by :meth:`JobDispatcher.run_job`: its batches in flight, and whether the
    last lease found no more pending batches (the next completion may then finish the job)."""

    def __init__(self) -> None:
        self.in_flight: set[asyncio.Task] = set()
        self.exhausted = False
        # The job's context (its span): a batch leased by another batch's task is the job's child too.
        self.context = contextvars.copy_context()
        self.planned: frozenset[str] | None = None  # the batches of the plan this run recorded
        self.leased: set[str] = set()  # every batch this run leased

    def took(self, batches: list[GradeBatch]) -> list[GradeBatch]:
        """Note ``batches`` as leased by this run; returns them."""
        self.leased.update(b.batch_id for b in batches)
        return batches

    @property
    def holds_all(self) -> bool:
        """Whether every batch of the job was leased by this run (it recorded the plan, and has
        leased each of its batches): none can be pending but one this run's lost grader
        released, which says so itself. Whether another dispatcher's lease expired need not be
        asked then."""
        return self.planned is not None and self.planned <= self.leased


class JobDispatcher:
    """Drives every unfinished job in the store to completion, each grade written once.

    Args:
        store: Leases (``batch_lease_s``), polling (``poll_interval_s``), ``max_batch_attempts``.
        max_concurrent_batches: Batches of one job in flight at once.
        registry: The store's async calls (``JobRegistryImpl``'s methods or a handle's).
        plan: Reads and plans a queued job; raises :class:`JobFailed` for a job that cannot be
            planned (the job fails); any other exception interrupts the job, resumed later.
        grade: Grades one batch. A :class:`RaygradeError` (or one Ray wraps) fails the batch's
            items with its type; any other exception is a lost grader: the batch is released
            and re-dispatched until ``max_batch_attempts`` of its grader calls were lost (leases
            taken over from a dispatcher that died do not count).
        metrics: Gauges, job durations and failed items (``raygrade_*`` of :mod:`raygrade.metrics`).
        tags: Tags on every metric (the application's namespace).
        owner: This dispatcher's lease owner id (default: a new random one).
        clock: Monotonic seconds (when the gauges were last read).
        sleep: ``await sleep(seconds)``.
    """

    def __init__(self, store: StoreConfig, max_concurrent_batches: int, registry: Any, plan: PlanFn,
                 grade: GradeFn, metrics: Metrics, *, tags: dict[str, str] | None = None, owner: str | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self._cfg, self._limit = store, max_concurrent_batches
        self._registry, self._plan_fn, self._grade_fn = registry, plan, grade
        self._metrics, self._tags = metrics, dict(tags or {})
        self.owner = owner or f"batcher-{uuid.uuid4().hex[:12]}"
        self._clock, self._sleep = clock, sleep
        self._jobs: dict[str, asyncio.Task] = {}
        # Grader calls in flight across all jobs (unbounded until the Serve wrapper sizes it).
        self.grader_slots = GraderSlots()
        self._leased: set[str] = set()  # batches this dispatcher is grading now (their leases are renewed)
        self._gauges_at = float("-inf")  # when the store's gauges were last read

    @property
    def leased(self) -> frozenset[str]:
        """Ids of the batches this dispatcher is grading now."""
        return frozenset(self._leased)

    def submit(self, job_id: str, started_by: str = "submit", *, known: tuple[GradingJob, str] | None = None,
               parent: otel_context.Context | None = None) -> asyncio.Task:
        """Drive ``job_id`` now, unless this dispatcher already is (the control loop would find
        it within ``poll_interval_s``); returns the job's task. Call on the event loop.

        ``started_by``: ``"submit"`` (the ingress's nudge: the job's span joins the caller's
        trace) or ``"poll"`` (found in the store: it joins the trace stored with the job).
        ``known``: the job as stored and its tenant, from a caller that just recorded it: the
        job is planned without asking the store for it (a job already planned, cancelled or
        ended meanwhile is found so by the plan's compare-and-swap). ``parent``: the trace
        context the job's span joins (default: the caller's current one)."""
        task = self._jobs.get(job_id)
        if task is None or task.done():
            task = self._jobs[job_id] = asyncio.get_running_loop().create_task(
                self.run_job(job_id, started_by, known=known, parent=parent))
        return task

    async def control_step(self) -> None:
        """One round of the control loop: start every unfinished job not being driven (a queued
        one once it is ``poll_interval_s`` old: the ingress's nudge, with the job, brings a new
        one sooner, and a lost nudge costs one poll), forget finished tasks, renew this
        dispatcher's leases, report the gauges when due. Raises what the registry raises."""
        for job_id in await self._registry.unfinished_jobs(self._cfg.poll_interval_s):
            self.submit(job_id, "poll")
        for job_id in [j for j, t in self._jobs.items() if t.done()]:
            del self._jobs[job_id]
        if self._leased:
            await self._registry.renew_leases(self.owner, self._cfg.batch_lease_s, list(self._leased))
        if self._clock() - self._gauges_at >= GAUGE_INTERVAL_S:
            self._gauges_at = self._clock()
            g = await self._registry.gauges()
            for state, n in g["jobs"].items():
                self._metrics.set("raygrade_jobs", n, {**self._tags, "state": state})
            self._metrics.set("raygrade_batches_pending", g["batches_pending"], self._tags)

    async def control_loop(self) -> None:
        """:meth:`control_step` every ``poll_interval_s``, forever; a failing store (the
        registry restarting) is logged and tried again."""
        while True:
            try:
                await self.control_step()
            except Exception as exc:
                logger.warning("batcher control loop: %s", type(exc).__name__)
            await self._sleep(self._cfg.poll_interval_s)

    async def _report_finished(self, job_id: str, final: JobStatus) -> None:
        """Job duration and failed items by error type, once per job."""
        tags = {**self._tags, "state": final.state.value}
        if final.finished_at is not None:
            self._metrics.observe("raygrade_job_duration_seconds", max(0.0, final.finished_at - final.created_at), tags)
        if final.progress.items_failed:
            for etype, n in (await self._registry.failure_counts(job_id)).items():
                self._metrics.inc("raygrade_items_failed", n, {**self._tags, "error_type": etype})

    async def _finished(self, job_id: str, final: JobStatus) -> str:
        """Log and report a job that ended; returns its state."""
        logger.info("job %s %s: %d batches", job_id, final.state.value, final.progress.batches_total,
                    extra=ids(job_id))
        await self._report_finished(job_id, final)
        return final.state.value

    async def _plan(self, job_id: str, job: GradingJob, tenant: str, run: _Run) -> list[GradeBatch]:
        """Read, plan and record a queued job (``queued → running``; idempotent in the store) and
        lease its first batches in the same registry call; returns them (noted in ``run``)."""
        with span("raygrade.plan") as s:
            batches, errors, model = await self._plan_fn(job_id, job, tenant)
            s.set_attributes({"raygrade.batches": len(batches), "raygrade.errors": len(errors)})
            # If another dispatcher recorded a plan first, its batch ids are the ones stored: this
            # run then never holds all of ``planned`` and keeps looking for expired leases.
            run.planned = frozenset(b.batch_id for b in batches)
            return run.took(await self._registry.plan_and_lease(job_id, batches, errors, model, self.owner,
                                                                self._cfg.batch_lease_s, self._limit))

    async def run_job(self, job_id: str, started_by: str = "submit", *,
                      known: tuple[GradingJob, str] | None = None,
                      parent: otel_context.Context | None = None) -> None:
        """Drive one job until it is finished; returns early (to be resumed by the control loop)
        if the store or the registry fails. Never raises. Spans: ``raygrade.job`` (a child of
        ``parent``, else of the current context when ``started_by`` is ``"submit"``, else of the
        trace context stored with the job, else a new trace), with ``raygrade.plan`` and one
        ``raygrade.batch`` per batch."""
        if started_by != "submit" and parent is None:  # found in the store: the trace its submission joined, if any
            try:
                parent = extract(await self._registry.trace_context(job_id) or {}) or new_trace()
            except Exception:  # the store unreachable: run_job's first call says so again
                parent = new_trace()
        with span("raygrade.job", {"raygrade.job_id": job_id, "raygrade.job.started_by": started_by},
                  parent=parent) as s:
            s.set_attribute("raygrade.job.outcome", await self._run_job(job_id, known))

    async def _run_job(self, job_id: str, known: tuple[GradingJob, str] | None) -> str:
        """:meth:`run_job`'s body; returns the job's final state, ``failed``, or ``interrupted``."""
        reg, run = self._registry, _Run()
        in_flight = run.in_flight
        try:
            if known is not None:  # just recorded (queued): no need to read it back
                job, tenant = known
            else:
                status, job = await reg.status_and_job(job_id)
                if status.state.terminal:
                    return status.state.value
                tenant = status.tenant
            first: list[GradeBatch] | None = await self._plan(job_id, job, tenant, run) if job is not None else None
            while True:
                if len(in_flight) < self._limit and not run.exhausted:  # ask the store only when a slot is free
                    want = self._limit - len(in_flight)
                    leased = first if first is not None else run.took(await reg.lease_batches(
                        job_id, self.owner, self._cfg.batch_lease_s, want))
                    first = None
                    # Fewer than asked: no batch is pending now (one released, or whose lease
                    # expires, is looked for again after the next poll interval).
                    run.exhausted = len(leased) < want
                    in_flight |= {asyncio.create_task(self._grade(job_id, b, run)) for b in leased}
                if not in_flight:
                    final = await reg.finish_if_complete(job_id)
                    if final is not None:
                        return await self._finished(job_id, final)
                    # Batches leased by a dispatcher that died: re-dispatched when their lease expires.
                    await self._sleep(self._cfg.poll_interval_s)
                    run.exhausted = False
                    continue
                # A batch finished, or poll_interval_s passed (batches whose lease expired are
                # leased again; those released by this run's lost graders are at once).
                tick = asyncio.ensure_future(self._sleep(self._cfg.poll_interval_s))
                try:
                    done, _ = await asyncio.wait(in_flight | {tick}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    tick.cancel()
                if tick in done and not run.holds_all:
                    run.exhausted = False
                for t in done - {tick}:
                    in_flight.discard(t)
                    # A store failure ends this run (the control loop starts it again); the last
                    # batch's task may have finished the job.
                    if (final := t.result()) is not None:
                        return await self._finished(job_id, final)
        except JobFailed as failed:
            err = failed.error
            logger.warning("job %s failed: %s", job_id, err.error_type, extra=ids(job_id))
            try:
                final = await reg.fail_job(job_id, GradingErrorItem(student_ids=[], question_ids=[],
                                                                    type=err.error_type, message=err.message))
                await self._report_finished(job_id, final)
                return final.state.value
            except Exception:
                logger.warning("job %s: could not record the failure; will resume", job_id, extra=ids(job_id))
                return "interrupted"
        except Exception as exc:
            # The registry, store or engine unreachable (a restart under way) is not the
            # job's fault: the control loop resumes it from the store.
            logger.warning("job %s interrupted (%s); will resume", job_id, type(exc).__name__, extra=ids(job_id))
            return "interrupted"
        finally:
            for t in in_flight:
                t.cancel()

    async def _grade(self, job_id: str, batch: GradeBatch, run: _Run) -> JobStatus | None:
        """Grade one leased batch and write its outcome; returns the job's terminal status when
        this batch was its last and the job finished with it."""
        self._leased.add(batch.batch_id)
        try:
            with span("raygrade.batch", {"raygrade.batch_id": batch.batch_id,
                                         "raygrade.students": len(batch.students)}):
                return await self._grade_once(job_id, batch, run)
        finally:
            self._leased.discard(batch.batch_id)

    async def _grade_once(self, job_id: str, batch: GradeBatch, run: _Run) -> JobStatus | None:
        try:
            async with self.grader_slots:  # leased while it waits: its lease is renewed as any other
                outcome, replica = await self._grade_fn(batch)
        except Exception as exc:
            if (err := raygrade_cause(exc)) is not None:
                # A page image missing from the blob store, or an error raised inside the grader
                # (Ray wraps it): not a lost replica, so no re-dispatch; the items carry its
                # type and message.
                logger.warning("batch %s: %s", batch.batch_id, err.error_type, extra=ids(job_id, batch.batch_id))
                error_type, message = err.error_type, err.message
            else:  # the replica died, or the call failed outside BatchGrader
                # Only lost grader calls count toward the bound; leases taken over from a batcher
                # that died do not.
                losses = await self._registry.record_grader_loss(batch.batch_id, self.owner,
                                                                 self._cfg.max_batch_attempts)
                if losses is None or losses < self._cfg.max_batch_attempts:
                    # Released (pending again: lease it at once), or no longer ours: its new owner grades it.
                    logger.warning("batch %s: grader lost (%s), re-dispatching", batch.batch_id, type(exc).__name__,
                                   extra=ids(job_id, batch.batch_id))
                    run.exhausted = False
                    return None
                error_type, message = "grader_error", f"grader call failed {losses} times: {type(exc).__name__}"
            outcome, replica = BatchOutcome(batch_id=batch.batch_id, results=[], usage={}, calls=0, errors=[
                students_error(batch.students, error_type, message, batch.batch_id)]), None
        if run.exhausted and sum(not t.done() for t in run.in_flight) == 1:  # nothing else pending or in flight
            _, final = await self._registry.complete_and_finish(job_id, outcome, replica)
            return final
        if run.exhausted:
            await self._registry.complete_batch(job_id, outcome, replica)
            return None
        # The slot this batch frees goes to the job's next batch, leased in the same round trip;
        # it joins the run's tasks before this one leaves them, so the run never holds more than its limit.
        _, leased = await self._registry.complete_and_lease(job_id, outcome, replica, self.owner,
                                                            self._cfg.batch_lease_s, 1)
        run.took(leased)
        run.exhausted = run.exhausted or not leased
        run.in_flight |= {asyncio.create_task(self._grade(job_id, b, run), context=run.context.copy())
                         for b in leased}
        return None
