"""``Batcher``: turns accepted jobs into token-budgeted grading requests, from the store.

For each unfinished job in the durable store it reads the pages (OCR for text-only
models), estimates every student's tokens, plans batches with
:mod:`raygrade.planner` (never splitting a student) and records the
plan; then it leases batches, sends them to the ``Grader`` deployment with bounded
concurrency, and writes each outcome back. It acts only on what the store says, so
a batcher that restarts (or a second one) resumes every job where it stood: a batch
whose grader replica died is released and re-dispatched at once, one whose batcher
died is re-dispatched when its lease expires, and grades are written exactly once
(:mod:`raygrade.store`). OCR fan-out is :func:`raygrade.serve.reader.read_submissions`;
job-completion webhooks go out from :class:`raygrade.serve.webhook_sender.WebhookSender`,
in a task of their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from ray import serve

from raygrade.batch import BatchOutcome, GradeBatch, students_error
from raygrade.blobs import BlobStore, inline
from raygrade.config import RaygradeArgs
from raygrade.errors import PlanningError, RaygradeError, raygrade_cause
from raygrade.metrics import Recorder
from raygrade.planner import JobPlanner, planner_for
from raygrade.protocol import (
    GradingErrorItem,
    GradingJob,
    JobState,
    ReadingMode,
    StoredImage,
)
from raygrade.serve.logs import ids
from raygrade.serve.reader import read_submissions, reading_mode
from raygrade.serve.webhook_sender import WebhookSender

# A child of Serve's logger: lines go to the replica's log file in the app's logging_config
# format (JSON in serve_config.yaml), as Serve documents for deployment code.
logger = logging.getLogger(f"ray.serve.{__name__}")

#: Seconds between reads of the store's job and queue gauges (Ray exports metrics every few
#: seconds anyway; the control loop itself polls every ``poll_interval_s``).
GAUGE_INTERVAL_S = 5.0

class _JobFailed(Exception):
    """A job-fatal error (retrying would fail the same way)."""

    def __init__(self, error: RaygradeError):
        super().__init__(error.message)
        self.error = error


@serve.deployment(name="Batcher", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=100, num_replicas=1)
class Batcher:
    """Drives every unfinished job in the store to completion.

    Args:
        args: Application arguments (``args.store``: leases, polling, webhooks).
        registry: ``JobRegistry`` handle (the store).
        reader: ``PageReader`` handle (OCR).
        grader: ``Grader`` handle.
    """

    def __init__(self, args: RaygradeArgs, registry, reader, grader):
        self._args = args
        self._store_cfg = args.store
        self._registry, self._reader, self._grader = registry, reader, grader
        self._planner: JobPlanner | None = None
        self._blobs: BlobStore | None = None
        self._owner = f"batcher-{uuid.uuid4().hex[:12]}"
        self._jobs: dict[str, asyncio.Task] = {}
        self._leased: set[str] = set()  # batches this replica is grading now (their leases are renewed)
        self._control: asyncio.Task | None = None
        self._webhook_loop: asyncio.Task | None = None
        self._metrics = Recorder()  # raygrade.metrics
        self._gauges_at = float("-inf")  # when the store's gauges were last read
        self._ns = {"namespace": args.namespace}
        self._webhooks = WebhookSender(registry, args.store, self._owner, self._metrics, self._ns)
        self._ensure_control_loop()

    def _ensure_control_loop(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # constructed outside the event loop: started by the first call
            return
        if self._control is None or self._control.done():
            self._control = loop.create_task(self._control_loop())
        if self._webhook_loop is None or self._webhook_loop.done():
            # Its own task: a slow webhook receiver never holds up dispatch, leases or other jobs.
            self._webhook_loop = loop.create_task(self._webhooks.run(self._store_cfg.poll_interval_s))

    async def check_health(self) -> None:
        """Serve's periodic health check; (re)starts the control loop if it is not running."""
        self._ensure_control_loop()

    async def ready(self) -> None:
        """Return once a job could be graded end to end: the store answers (through the
        registry) and a Grader replica is ready (:meth:`Grader.ready`). Raises what they raise."""
        await self._registry.gauges.remote()
        await self._grader.ready.remote()

    async def _get_planner(self) -> JobPlanner:
        if self._planner is None:
            self._planner = await asyncio.to_thread(planner_for, self._args)
        return self._planner

    def _blob_store(self) -> BlobStore:
        if self._blobs is None:
            self._blobs = BlobStore(self._store_cfg.resolved_blob_uri())
        return self._blobs

    def _inline(self, batch: GradeBatch) -> GradeBatch:
        """``batch`` with its stored page images as :class:`ImagePage` s (bytes from the blob
        store, read here; they reach the grader replica through Ray's object store)."""
        if not any(isinstance(p, StoredImage) for st in batch.students for p in st.pages):
            return batch
        blobs = self._blob_store()
        students = [st.model_copy(update={"pages": [inline(p, blobs) for p in st.pages]}) for st in batch.students]
        return batch.model_copy(update={"students": students})

    async def submit(self, job_id: str) -> None:
        """Start driving ``job_id`` now (the control loop would find it within ``poll_interval_s``)."""
        self._ensure_control_loop()
        self._start(job_id)

    def _start(self, job_id: str) -> None:
        task = self._jobs.get(job_id)
        if task is None or task.done():
            self._jobs[job_id] = asyncio.create_task(self._run(job_id))

    async def _control_loop(self) -> None:
        """Resume unfinished jobs, renew this batcher's leases, report gauges; forever."""
        cfg = self._store_cfg
        while True:
            try:
                for job_id in await self._registry.unfinished_jobs.remote():
                    self._start(job_id)
                for job_id in [j for j, t in self._jobs.items() if t.done()]:
                    del self._jobs[job_id]
                if self._leased:
                    await self._registry.renew_leases.remote(self._owner, cfg.batch_lease_s, list(self._leased))
                if time.monotonic() - self._gauges_at >= GAUGE_INTERVAL_S:
                    self._gauges_at = time.monotonic()
                    await self._report_gauges()
            except Exception as exc:  # the store is briefly unreachable (registry restarting): try again
                logger.warning("batcher control loop: %s", type(exc).__name__)
            await asyncio.sleep(cfg.poll_interval_s)

    async def _report_gauges(self) -> None:
        g = await self._registry.gauges.remote()
        for state, n in g["jobs"].items():
            self._metrics.set("raygrade_jobs", n, {**self._ns, "state": state})
        self._metrics.set("raygrade_batches_pending", g["batches_pending"], self._ns)

    async def _report_finished(self, job_id: str, final) -> None:
        """Job duration and failed items by error type, once per job."""
        tags = {**self._ns, "state": final.state.value}
        if final.finished_at is not None:
            self._metrics.observe("raygrade_job_duration_seconds", max(0.0, final.finished_at - final.created_at), tags)
        if final.progress.items_failed:
            for etype, n in (await self._registry.failure_counts.remote(job_id)).items():
                self._metrics.inc("raygrade_items_failed", n, {**self._ns, "error_type": etype})

    async def _plan(self, job_id: str, job: GradingJob, tenant: str = "") -> None:
        """Read and plan a queued job and record the plan (``queued → running``); idempotent.

        Raises:
            _JobFailed: planning failed in a way a retry would repeat.
        """
        mode = reading_mode(job, self._args.provider)
        planner = await self._get_planner()
        works, read_errors = await read_submissions(job, mode, self._reader, self._blob_store())
        try:
            batches, plan_errors = await asyncio.to_thread(planner.batches, job_id, job, works,
                                                           mode == ReadingMode.VISION, tenant)
        except Exception as exc:
            raise _JobFailed(exc if isinstance(exc, RaygradeError)
                             else PlanningError(f"planning failed: {type(exc).__name__}")) from exc
        await self._registry.record_plan.remote(job_id, batches, read_errors + plan_errors,
                                                job.options.model or self._args.provider.model)

    async def _run(self, job_id: str) -> None:
        reg, cfg = self._registry, self._store_cfg
        in_flight: set[asyncio.Task] = set()
        try:
            status = await reg.status.remote(job_id)
            if status.state.terminal:
                return
            if status.state == JobState.QUEUED:
                await self._plan(job_id, await reg.get_job.remote(job_id), status.tenant)
            limit = self._args.batcher.max_concurrent_batches
            while True:
                if len(in_flight) < limit:  # ask the store only when a slot is free
                    leased = await reg.lease_batches.remote(job_id, self._owner, cfg.batch_lease_s,
                                                            limit - len(in_flight))
                    in_flight |= {asyncio.create_task(self._grade(job_id, b)) for b in leased}
                if not in_flight:
                    final = await reg.finish_if_complete.remote(job_id)
                    if final is not None:
                        logger.info("job %s %s: %d batches", job_id, final.state.value,
                                    final.progress.batches_total, extra=ids(job_id))
                        await self._report_finished(job_id, final)
                        return
                    # Batches leased by a batcher that died: re-dispatched when their lease expires.
                    await asyncio.sleep(cfg.poll_interval_s)
                    continue
                done, in_flight = await asyncio.wait(in_flight, timeout=cfg.poll_interval_s,
                                                     return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    t.result()  # a store failure ends this run; the control loop starts it again
        except _JobFailed as failed:
            err = failed.error
            logger.warning("job %s failed: %s", job_id, err.error_type, extra=ids(job_id))
            try:
                final = await reg.fail_job.remote(job_id, GradingErrorItem(student_ids=[], question_ids=[],
                                                                           type=err.error_type, message=err.message))
                await self._report_finished(job_id, final)
            except Exception:
                logger.warning("job %s: could not record the failure; will resume", job_id, extra=ids(job_id))
        except Exception as exc:
            # The registry, store or engine unreachable (a restart under way) is not the
            # job's fault: the control loop resumes it from the store.
            logger.warning("job %s interrupted (%s); will resume", job_id, type(exc).__name__, extra=ids(job_id))
        finally:
            for t in in_flight:
                t.cancel()

    async def _grade(self, job_id: str, batch: GradeBatch) -> None:
        self._leased.add(batch.batch_id)
        try:
            await self._grade_once(job_id, batch)
        finally:
            self._leased.discard(batch.batch_id)

    async def _grade_once(self, job_id: str, batch: GradeBatch) -> None:
        try:
            request = await asyncio.to_thread(self._inline, batch)
            outcome, replica = await self._grader.grade.remote(request)
        except Exception as exc:
            if (err := raygrade_cause(exc)) is not None:
                # A page image missing from the blob store, or an error raised inside the grader
                # (Ray wraps it): not a lost replica, so no re-dispatch; the items carry its
                # type and message.
                logger.warning("batch %s: %s", batch.batch_id, err.error_type, extra=ids(job_id, batch.batch_id))
                error_type, message = err.error_type, err.message
            else:  # the replica died, or the call failed outside BatchGrader
                attempts = await self._registry.batch_attempts.remote(batch.batch_id)
                if attempts < self._store_cfg.max_batch_attempts:
                    logger.warning("batch %s: grader lost (%s), re-dispatching", batch.batch_id, type(exc).__name__,
                                   extra=ids(job_id, batch.batch_id))
                    await self._registry.release_batch.remote(batch.batch_id, self._owner)
                    return
                error_type, message = "grader_error", f"grader call failed {attempts} times: {type(exc).__name__}"
            outcome, replica = BatchOutcome(batch_id=batch.batch_id, results=[], usage={}, calls=0, errors=[
                students_error(batch.students, error_type, message, batch.batch_id)]), None
        await self._registry.complete_batch.remote(job_id, outcome, replica)
