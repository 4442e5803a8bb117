"""``Batcher``: the Serve deployment that turns accepted jobs into grading requests, from the store.

A thin wrapper around :class:`raygrade.dispatch.JobDispatcher` (the exactly-once dispatch,
lease and re-dispatch loop, a plain class unit-tested on a virtual clock): it gives the
dispatcher the ``JobRegistry`` handle's calls, planning (pages read for text-only models by
:func:`raygrade.serve.reader.read_submissions`, every student's tokens estimated and batches
packed by :mod:`raygrade.planner`, never splitting a student) and grading (the ``Grader``
deployment, which reads the batch's stored page images itself). Job-completion webhooks go out
from :class:`raygrade.serve.webhook_sender.WebhookSender`, in a task of their own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
from ray import serve

from raygrade.batch import BatchOutcome, GradeBatch
from raygrade.blobs import BlobStore, has_stored_pages, inline_batch
from raygrade.coalesce import Coalescer
from raygrade.config import RaygradeArgs
from raygrade.dispatch import JobDispatcher, planning_failed
from raygrade.grouped import GroupedCall
from raygrade.metrics import Recorder
from raygrade.planner import BatchLimits, JobPlanner, planner_for
from raygrade.protocol import GradingErrorItem, GradingJob, ReadingMode
from raygrade.serve import HEALTH_CHECK_PERIOD_S
from raygrade.serve.grader import PagesElsewhere, PagesFrom
from raygrade.serve.job_registry import store_threads
from raygrade.serve.reader import read_submissions, reading_mode
from raygrade.serve.registry_short_path import GROUPED_CALLS
from raygrade.serve.webhook_sender import WebhookSender
from raygrade.tracing import detached, extract, inject, new_trace, span

logger = logging.getLogger(f"ray.serve.{__name__}")

#: Seconds between two reads of the running ``Grader`` replicas (at least ``poll_interval_s``).
#: ``serve.status()`` builds every application's details (≈ 10 % of the batcher's CPU when read
#: every second under load, measured with py-spy); Serve's autoscaler waits longer than this
#: before it adds replicas (``upscale_delay_s``, 30 s by default).
GRADER_STATUS_INTERVAL_S = 5.0


class HandleCalls:
    """A deployment handle's methods as coroutines: ``await HandleCalls(h).m(*a)`` is
    ``await h.m.remote(*a)`` (what :class:`JobDispatcher` expects of its registry).

    With ``grouped``, calls to those methods that come while earlier ones are in flight go
    together in one ``h.call_many`` call (:class:`raygrade.grouped.GroupedCall`, at most
    ``max_in_flight`` at once): a batcher driving many small jobs plans and completes them in
    a few registry calls, not two or more per job. Each call's result or exception is its own.
    """

    def __init__(self, handle, grouped: frozenset[str] = frozenset(), max_in_flight: int = 1):
        self._handle = handle
        self._grouped_names = grouped
        self._group: GroupedCall[tuple[str, tuple, dict, dict[str, str]], Any] = GroupedCall(
            lambda calls: handle.call_many.remote(calls), max_in_flight=max_in_flight)

    def __getattr__(self, name: str):
        if name in self._grouped_names:
            group = self._group

            async def grouped(*args, **kwargs):
                # Its store call joins the caller's trace, whichever call carries it.
                return await group((name, args, kwargs, inject()))

            return grouped
        method = getattr(self._handle, name)

        async def call(*args, **kwargs):
            return await method.remote(*args, **kwargs)

        return call


@serve.deployment(name="Batcher", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=100, num_replicas=1,
                  health_check_period_s=HEALTH_CHECK_PERIOD_S)
class Batcher:
    """Drives every unfinished job in the store to completion (:class:`JobDispatcher`).

    Args:
        args: Application arguments (``args.store``: leases, polling, webhooks;
            ``args.batcher.max_concurrent_batches``).
        registry: ``JobRegistry`` handle (the store).
        reader: ``PageReader`` handle (OCR).
        grader: ``Grader`` handle.
        grader_slots: The ``Grader`` deployment's ``max_ongoing_requests``: the batcher keeps at
            most that many grader calls in flight per running Grader replica, across all jobs
            (:class:`raygrade.inflight.GraderSlots`, resized every
            :data:`GRADER_STATUS_INTERVAL_S` from ``serve.status()``); ``None``: not bounded here.
    """

    def __init__(self, args: RaygradeArgs, registry, reader, grader, grader_slots: int | None = None):
        self._args = args
        self._store_cfg = args.store
        self._registry, self._reader, self._grader = registry, reader, grader
        self._planner: JobPlanner | None = None
        self._blobs: BlobStore | None = None
        # Graders read the page images themselves until one runs on another node than their folder.
        self._graders_read_pages = True
        self._node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        self._metrics = Recorder()  # raygrade.metrics
        self._ns = {"namespace": args.namespace}
        # Batches of jobs that allow it share requests with other jobs' (raygrade.coalesce).
        self._coalescer = Coalescer(self._grade, BatchLimits.of(args), args.batcher.share_wait_s)
        # Planning and completions of concurrent jobs reach the registry together: as many calls in
        # flight as the registry has store threads (one on SQLite), the rest grouped behind them.
        calls = HandleCalls(registry, GROUPED_CALLS, store_threads(args.store.resolved_url()))
        self._dispatcher = JobDispatcher(args.store, args.batcher.max_concurrent_batches, calls,
                                         self._plan, self._coalescer.grade, self._metrics, tags=self._ns)
        self._webhooks = WebhookSender(registry, args.store, self._dispatcher.owner, self._metrics, self._ns)
        self._control: asyncio.Task | None = None
        self._webhook_loop: asyncio.Task | None = None
        self._grader_slots = grader_slots
        self._slots_loop: asyncio.Task | None = None
        self._ensure_control_loop()

    def _ensure_control_loop(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # constructed outside the event loop: started by the first call
            return
        # Outside the trace of the call that starts them (jobs they find start traces of their own).
        if self._control is None or self._control.done():
            self._control = loop.create_task(self._dispatcher.control_loop(), context=detached())
        if self._webhook_loop is None or self._webhook_loop.done():
            # Its own task: a slow webhook receiver never holds up dispatch, leases or other jobs.
            self._webhook_loop = loop.create_task(self._webhooks.run(self._store_cfg.poll_interval_s),
                                                  context=detached())
        if self._grader_slots is not None and (self._slots_loop is None or self._slots_loop.done()):
            self._slots_loop = loop.create_task(self._size_grader_slots(self._grader_slots), context=detached())

    async def _size_grader_slots(self, per_replica: int) -> None:
        """Grader calls in flight bounded by the running Grader replicas × their
        ``max_ongoing_requests`` (the calls over it would wait in Serve's router, retried with
        back-off in no fixed order; here they wait first come, first served). Read every
        :data:`GRADER_STATUS_INTERVAL_S`, or every ``poll_interval_s`` while replicas are starting
        or stopping. A status that cannot be read keeps the last bound (logged once until it can
        be read again)."""
        from ray.serve.schema import ReplicaState

        failing = False
        while True:
            settled = False
            try:
                status = await asyncio.to_thread(serve.status)
                grader = status.applications[self._grader.app_name].deployments[self._grader.deployment_name]
                running = grader.replica_states.get(ReplicaState.RUNNING, 0)
                self._dispatcher.grader_slots.resize(max(1, running) * per_replica)
                settled = running > 0 and all(st == ReplicaState.RUNNING or not n
                                              for st, n in grader.replica_states.items())
                failing = False
            except KeyError:  # the application not listed: being deployed or deleted
                pass
            except Exception as exc:  # the controller restarting
                if not failing:
                    logger.warning("batcher: could not read the Grader replicas (%s); keeping the last bound",
                                   type(exc).__name__)
                failing = True
            interval = self._store_cfg.poll_interval_s
            await asyncio.sleep(max(interval, GRADER_STATUS_INTERVAL_S) if settled else interval)

    async def check_health(self) -> None:
        """Serve's periodic health check; (re)starts the control loop if it is not running."""
        self._ensure_control_loop()

    async def ready(self) -> None:
        """Return once a job could be graded end to end: the store answers (through the
        registry) and a Grader replica is ready (:meth:`Grader.ready`). Raises what they raise."""
        await self._registry.gauges.remote()
        await self._grader.ready.remote()

    async def submit(self, job_id: str, job: GradingJob | None = None, tenant: str | None = None) -> None:
        """Start driving ``job_id`` now (the control loop would find it within ``poll_interval_s``);
        ``job`` and ``tenant``: the job as stored and its tenant, when the caller has them (the
        ingress, just after recording it), so that it is planned without being read back."""
        self._ensure_control_loop()
        self._dispatcher.submit(job_id, known=(job, tenant) if job is not None and tenant is not None else None)

    async def submit_many(self, jobs: list[tuple[str, GradingJob | None, str, dict[str, str]]]) -> None:
        """:meth:`submit` for several jobs in one call (:class:`raygrade.serve.accept.JobAcceptor`):
        ``(job_id, job or None, tenant, trace_context)`` each; a job's span joins the trace in
        its ``trace_context`` (W3C headers), that of the submission that recorded it."""
        self._ensure_control_loop()
        for job_id, job, tenant, trace_context in jobs:
            self._dispatcher.submit(job_id, known=(job, tenant) if job is not None else None,
                                    parent=extract(trace_context) or new_trace())

    async def _get_planner(self) -> JobPlanner:
        if self._planner is None:
            self._planner = await asyncio.to_thread(planner_for, self._args)
        return self._planner

    def _blob_store(self) -> BlobStore:
        if self._blobs is None:
            self._blobs = BlobStore(self._store_cfg.resolved_blob_uri())
        return self._blobs

    async def _plan(self, job_id: str, job: GradingJob, tenant: str
                    ) -> tuple[list[GradeBatch], list[GradingErrorItem], str | None]:
        """Read the job's pages (OCR for text-only models) and plan its batches.

        Raises:
            JobFailed: planning failed in a way a retry would repeat (a reader that cannot be
                reached raises what it raises: the job is resumed later).
        """
        mode = reading_mode(job, self._args.provider)
        planner = await self._get_planner()
        with span("raygrade.read", {"raygrade.reading_mode": mode.value}):
            works, read_errors = await read_submissions(job, mode, self._reader, self._blob_store())
        try:
            batches, plan_errors = await asyncio.to_thread(planner.batches, job_id, job, works,
                                                           mode == ReadingMode.VISION, tenant)
        except Exception as exc:
            raise planning_failed(exc) from exc
        return batches, read_errors + plan_errors, job.options.model or self._args.provider.model

    async def _grade(self, batch: GradeBatch) -> tuple[BatchOutcome, str | None]:
        """Grade one batch on a ``Grader`` replica: ``(outcome, replica id)``. The replica reads
        the batch's stored page images itself (:class:`PagesFrom`); once one answers that it
        cannot (:class:`PagesElsewhere`: a folder on another node, or a store it cannot open),
        the batcher reads them and sends them with every batch (through Ray's object store)."""
        if self._graders_read_pages and has_stored_pages(batch):
            try:
                return await self._grader.grade.remote(batch, PagesFrom(self._blob_store().location, self._node_id))
            except PagesElsewhere:
                logger.info("batcher: a Grader replica cannot read the page images' store (a folder on another "
                            "node, or a store it cannot open); sending page images with each batch from now on")
                self._graders_read_pages = False
        request = await asyncio.to_thread(inline_batch, batch, self._blob_store())
        return await self._grader.grade.remote(request)
