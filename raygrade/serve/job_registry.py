"""``JobRegistry``: the Serve deployment in front of the durable job store.

Writes of job state go through here to :class:`raygrade.store.JobStore` (SQLite on the
head node by default, PostgreSQL for clusters), so a restart of any deployment, of the Serve
application or of the whole Ray cluster loses nothing that was accepted. The ingress reads
the store itself where it can, and on PostgreSQL records new jobs itself too
(:mod:`raygrade.serve.direct_store`); the registry creates and migrates the schema. Store
calls run in a worker thread (one for SQLite, whose writers serialise anyway; four for
PostgreSQL).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve

from raygrade.answer_groups import DEFAULT_THRESHOLD, AnswerGrouper
from raygrade.batch import BatchOutcome, GradeBatch
from raygrade.config import DEFAULT_TENANT, StoreConfig
from raygrade.errors import NotFoundError, RaygradeError
from raygrade.protocol import (
    AnswerGroup,
    FileDeleted,
    FileObject,
    GradingErrorItem,
    GradingJob,
    JobResults,
    JobState,
    JobStatus,
    ReviewItem,
    ReviewRequest,
    StoredImage,
    TenantUsage,
)
from raygrade.serve import HEALTH_CHECK_PERIOD_S
from raygrade.serve.registry_part import JobRequest, create_jobs
from raygrade.serve.registry_short_path import ShortPath
from raygrade.serve.registry_webhooks import WebhookOutbox
from raygrade.store import JobStore
from raygrade.tracing import span


def store_threads(dialect: str) -> int:
    """Threads a registry replica runs store calls on for ``dialect`` (or a store URL): one for
    SQLite, whose writers serialise anyway; four for PostgreSQL."""
    return 1 if dialect.startswith("sqlite") else 4


class JobRegistryImpl(ShortPath, WebhookOutbox):
    """The store behind async methods (plain class; :data:`JobRegistry` deploys it).

    Args:
        config: The store's URL and settings.
        namespace: The application's namespace: its jobs in a shared database.
        store: A store to use instead of one opened from ``config`` (unit tests: its calls then
            run on the caller's event loop, so a virtual clock sees them finish).
    """

    def __init__(self, config: StoreConfig, namespace: str = "raygrade", store: JobStore | None = None):
        self._config, self._namespace = config, namespace
        self._store = store or JobStore(config.resolved_url(), blob_uri=config.resolved_blob_uri())
        self._pool = None if store is not None else ThreadPoolExecutor(
            store_threads(self._store.dialect), thread_name_prefix="raygrade-store")
        self._grouper = AnswerGrouper()
        self._group_pool = ThreadPoolExecutor(1, thread_name_prefix="raygrade-groups")

    async def _do(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` on the store's thread, in a ``raygrade.store <call>`` span that
        records how long the call waited for the thread (``raygrade.store.queued_ms``)."""
        with span(f"raygrade.store {fn.__name__}") as s:
            if self._pool is None:
                return fn(*args, **kwargs)
            queued = time.perf_counter()

            def run():
                s.set_attribute("raygrade.store.queued_ms", round((time.perf_counter() - queued) * 1e3, 3))
                return fn(*args, **kwargs)

            return await asyncio.get_running_loop().run_in_executor(self._pool, run)

    async def create(self, job: GradingJob, idempotency_key: str | None = None, tenant: str = DEFAULT_TENANT,
                     trace_context: dict[str, str] | None = None,
                     request_hash: str | None = None) -> tuple[JobStatus, bool]:
        """Durably record ``tenant``'s job (see :meth:`JobStore.create_job`), with the W3C
        headers of the trace its submission joined and the hash of the job as sent.

        Raises:
            InvalidRequestError: a ``webhook_url`` while no signing secret is configured, or
                one whose host webhooks may not reach (:func:`raygrade.webhooks.resolve_checked`).
            ConflictError: the idempotency key was used with a different body.
        """
        [result] = await self.create_many([(job, idempotency_key, tenant, trace_context, request_hash)])
        if isinstance(result, RaygradeError):
            raise result
        return result

    async def create_many(self, requests: list[JobRequest]) -> list[tuple[JobStatus, bool] | RaygradeError]:
        """:meth:`create` for several jobs in one call (:class:`raygrade.serve.accept.JobAcceptor`):
        ``requests`` holds ``(job, idempotency_key, tenant, trace_context, request_hash)`` tuples.
        Each job is recorded in a transaction of its own, in order, on the store's thread.

        Returns:
            One entry per request: ``(status, created)``, or the :class:`RaygradeError` that
            :meth:`create` would have raised for that job alone.

        Raises:
            Exception: the store failed (what :meth:`create` raises then); jobs recorded
                before the failure stay recorded, as a retry with their idempotency key finds.
        """
        refused: dict[int, RaygradeError] = {}
        for i, (job, *_) in enumerate(requests):
            try:
                await self._check_webhook(job)
            except RaygradeError as err:
                refused[i] = err
        rest = [i for i in range(len(requests)) if i not in refused]
        created = await self._do(create_jobs, self._store, self._namespace, [requests[i] for i in rest])
        results = refused | dict(zip(rest, created))
        return [results[i] for i in range(len(requests))]


    async def replay(self, idempotency_key: str, request_hash: str, tenant: str = DEFAULT_TENANT) -> JobStatus | None:
        """The job an idempotent replay of the same request names, or ``None`` (:meth:`JobStore.replay_request`)."""
        return await self._do(self._store.replay_request, idempotency_key, request_hash, self._namespace, tenant)

    async def gauges(self) -> dict:
        """This application's jobs by state and pending batches (see :meth:`JobStore.gauges`)."""
        return await self._do(self._store.gauges, self._namespace)

    async def unfinished_jobs(self, queued_for_s: float = 0.0) -> list[str]:
        """This application's unfinished jobs (see :meth:`JobStore.unfinished_jobs`)."""
        return await self._do(self._store.unfinished_jobs, self._namespace, queued_for_s=queued_for_s)

    # -- reads ------------------------------------------------------------------------------
    async def get_job(self, job_id: str) -> GradingJob:
        """The job as stored (:meth:`JobStore.get_job`). Raises ``NotFoundError``."""
        return await self._do(self._store.get_job, job_id)

    async def trace_context(self, job_id: str) -> dict[str, str] | None:
        """The W3C headers of the trace the job's submission joined (:meth:`JobStore.trace_context`)."""
        return await self._do(self._store.trace_context, job_id)

    async def status(self, job_id: str, tenant: str | None = None) -> JobStatus:
        """The job's state and progress (:meth:`JobStore.status`); with ``tenant``, only that
        tenant's job. Raises ``NotFoundError``."""
        return await self._do(self._store.status, job_id, tenant)

    async def list_jobs(self, tenant: str, state: JobState | None = None, limit: int = 20, after: str | None = None
                        ) -> tuple[list[JobStatus], bool]:
        """The tenant's jobs in this application, newest first (:meth:`JobStore.list_jobs`)."""
        return await self._do(self._store.list_jobs, self._namespace, tenant, state=state, limit=limit, after=after)

    async def tenant_for_key(self, key_hash: str) -> str | None:
        """The tenant of a valid API key, by the key's SHA-256 (:meth:`JobStore.tenant_for_key`)."""
        return await self._do(self._store.tenant_for_key, key_hash)

    async def usage(self, tenant: str) -> TenantUsage:
        """The tenant's quota and usage (:meth:`JobStore.usage`)."""
        return await self._do(self._store.usage, tenant)

    async def check_quota(self, tenant: str, items: int, idempotency_key: str | None = None) -> None:
        """Raise ``QuotaExceededError`` if the tenant's quota would refuse a job of ``items``
        items now (:meth:`JobStore.check_quota`; before the ingress decodes the job's pages)."""
        await self._do(self._store.check_quota, tenant, items, self._namespace, idempotency_key)

    async def results(self, job_id: str, tenant: str | None = None) -> JobResults:
        """Grades and errors so far (:meth:`JobStore.results`). Raises ``NotFoundError``."""
        return await self._do(self._store.results, job_id, tenant)

    async def review_queue(self, tenant: str, job_id: str | None = None, question_id: str | None = None,
                           status: str | None = None, limit: int = 50, after: str | None = None
                           ) -> tuple[list[ReviewItem], bool]:
        """The tenant's items to review or reviewed (:meth:`JobStore.review_queue`)."""
        return await self._do(self._store.review_queue, self._namespace, tenant, job_id=job_id,
                              question_id=question_id, status=status, limit=limit, after=after)

    async def review_item(self, job_id: str, item_id: str, review: ReviewRequest, tenant: str | None = None,
                          key_hash: str | None = None) -> ReviewItem:
        """Record a teacher's review (:meth:`JobStore.review_item`)."""
        return await self._do(self._store.review_item, job_id, item_id, review, tenant=tenant, key_hash=key_hash)

    async def regrade(self, job_id: str, question_id: str, tenant: str | None = None) -> tuple[JobStatus, bool]:
        """A regrade job for a question, learning from its reviews (:meth:`JobStore.regrade_question`)."""
        return await self._do(self._store.regrade_question, job_id, question_id, tenant=tenant)

    async def answer_groups(self, job_id: str, question_id: str, tenant: str | None = None,
                            threshold: float = DEFAULT_THRESHOLD) -> list[AnswerGroup]:
        """A question's graded items in answer groups (:class:`raygrade.answer_groups.AnswerGrouper`;
        embedding runs in its own thread, never in the store's)."""
        found, texts = await self._do(self._store.answers, job_id, question_id, tenant)
        return await asyncio.get_running_loop().run_in_executor(
            self._group_pool, self._grouper.groups, job_id, question_id, found, texts, threshold)

    async def review_group(self, job_id: str, question_id: str, group_id: str, review: ReviewRequest,
                           tenant: str | None = None, key_hash: str | None = None,
                           threshold: float = DEFAULT_THRESHOLD) -> list[ReviewItem]:
        """One review for every member of an answer group not reviewed yet (members a teacher
        reviewed keep their review); returns the members. Raises ``NotFoundError`` for an unknown group."""
        group = next((g for g in await self.answer_groups(job_id, question_id, tenant, threshold)
                      if g.id == group_id), None)
        if group is None:
            raise NotFoundError(f"question {question_id!r} of job {job_id} has no group {group_id!r} at threshold "
                                f"{threshold:g}", param="group_id")
        return await self._do(self._store.review_items, job_id, group.item_ids, review, tenant=tenant,
                              key_hash=key_hash, keep_reviewed=True)

    async def item_page(self, job_id: str, item_id: str, page: int, tenant: str | None = None) -> tuple[bytes, str]:
        """A page of the item's student: ``(bytes, media type)`` (:meth:`JobStore.item_page`)."""
        return await self._do(self._store.item_page, job_id, item_id, page, tenant)

    # -- uploaded files (the Files API: raygrade.store.files) ------------------------------------
    async def create_file(self, tenant: str, filename: str, size: int, sha256: str, media_type: str,
                          pages: list[StoredImage]) -> FileObject:
        """Record an uploaded file whose blobs are stored (:meth:`JobStore.create_file`)."""
        return await self._do(self._store.create_file, tenant, filename, size, sha256, media_type, pages)

    async def check_file_quota(self, tenant: str, size: int) -> None:
        """Raise ``QuotaExceededError`` if the tenant's ``file_bytes`` quota has no room for a file
        of ``size`` bytes (:meth:`JobStore.check_file_quota`; before the upload is split)."""
        await self._do(self._store.check_file_quota, tenant, size)

    async def get_file(self, file_id: str, tenant: str) -> FileObject:
        """The tenant's file (:meth:`JobStore.get_file`). Raises ``NotFoundError``."""
        return await self._do(self._store.get_file, file_id, tenant)

    async def file_content(self, file_id: str, tenant: str) -> tuple[str, str, str]:
        """``(blob key, media type, name)`` of the tenant's file (:meth:`JobStore.file_content`)."""
        return await self._do(self._store.file_content, file_id, tenant)

    async def file_pages(self, file_id: str, tenant: str) -> list[StoredImage]:
        """The tenant's file's page images, by reference (:meth:`JobStore.file_pages`)."""
        return await self._do(self._store.file_pages, file_id, tenant)

    async def list_files(self, tenant: str, limit: int = 20, after: str | None = None
                         ) -> tuple[list[FileObject], bool]:
        """The tenant's files, newest first (:meth:`JobStore.list_files`)."""
        return await self._do(self._store.list_files, tenant, limit=limit, after=after)

    async def delete_file(self, file_id: str, tenant: str) -> FileDeleted:
        """Forget the tenant's file (:meth:`JobStore.delete_file`). Raises ``NotFoundError``."""
        return await self._do(self._store.delete_file, file_id, tenant)

    async def resolve_files(self, job: GradingJob, tenant: str) -> GradingJob:
        """``job`` with its file pages as the files' page images (:meth:`JobStore.resolve_files`)."""
        return await self._do(self._store.resolve_files, job, tenant)

    async def replicas(self, job_id: str, tenant: str | None = None) -> dict[str, int]:
        """Batches completed per grader replica (:meth:`JobStore.replicas`)."""
        return await self._do(self._store.replicas, job_id, tenant)

    async def batch_report(self, job_id: str) -> list[dict[str, Any]]:
        """Per batch: id, state, attempts, duplicates dropped (:meth:`JobStore.batch_report`)."""
        return await self._do(self._store.batch_report, job_id)

    async def failure_counts(self, job_id: str) -> dict[str, int]:
        """Failed items by error type (:meth:`JobStore.failure_counts`)."""
        return await self._do(self._store.failure_counts, job_id)

    # -- job transitions ----------------------------------------------------------------------
    async def cancel(self, job_id: str, tenant: str | None = None) -> JobStatus:
        """Cancel a queued or running job (:meth:`JobStore.cancel`). Raises ``NotFoundError``."""
        return await self._do(self._store.cancel, job_id, tenant)

    async def record_plan(self, job_id: str, planned: list[GradeBatch], errors: list[GradingErrorItem],
                          model: str | None) -> bool:
        """Record the job's batches, ``queued → running`` (:meth:`JobStore.record_plan`)."""
        return await self._do(self._store.record_plan, job_id, planned, errors, model)

    async def finish_if_complete(self, job_id: str) -> JobStatus | None:
        """Apply the completion policy (:meth:`JobStore.finish_if_complete`)."""
        return await self._do(self._store.finish_if_complete, job_id)

    async def fail_job(self, job_id: str, error: GradingErrorItem) -> JobStatus:
        """End a job that cannot go on (:meth:`JobStore.fail_job`)."""
        return await self._do(self._store.fail_job, job_id, error)

    # -- batch leases -------------------------------------------------------------------------
    async def lease_batches(self, job_id: str, owner: str, lease_s: float, limit: int) -> list[GradeBatch]:
        """Lease up to ``limit`` pending (or expired) batches (:meth:`JobStore.lease_batches`)."""
        return await self._do(self._store.lease_batches, job_id, owner, lease_s, limit)

    async def renew_leases(self, owner: str, lease_s: float, batch_ids: list[str] | None = None) -> int:
        """Extend ``owner``'s leases (:meth:`JobStore.renew_leases`)."""
        return await self._do(self._store.renew_leases, owner, lease_s, batch_ids)

    async def record_grader_loss(self, batch_id: str, owner: str, max_losses: int) -> int | None:
        """Count a lost grader call and release the batch below ``max_losses``
        (:meth:`JobStore.record_grader_loss`); ``None``: no longer ``owner``'s."""
        return await self._do(self._store.record_grader_loss, batch_id, owner, max_losses)

    async def complete_batch(self, job_id: str, outcome: BatchOutcome, replica: str | None = None) -> dict[str, int]:
        """Write a graded batch exactly once per item (:meth:`JobStore.complete_batch`)."""
        return await self._do(self._store.complete_batch, job_id, outcome, replica)


JobRegistry = serve.deployment(name="JobRegistry", num_replicas=1, ray_actor_options={"num_cpus": 0},
                               max_ongoing_requests=1000, health_check_period_s=HEALTH_CHECK_PERIOD_S)(JobRegistryImpl)
