"""Jobs accepted in groups: the ingress records concurrent submissions with one registry call and
nudges the batcher with one call (:class:`raygrade.grouped.GroupedCall`), instead of two calls per job.

Each job is still recorded in a transaction of its own, and answered only once it is durable:
a job refused (its quota, an idempotency key used with another body, a webhook it may not
reach) is refused alone; a registry that cannot be reached fails the group's requests as it
failed each request before.

Where every process may write the store (PostgreSQL), the ingress records jobs itself
(:meth:`raygrade.serve.direct_store.DirectStore.create_jobs`), with no round trip through a
registry replica: the same :meth:`JobStore.create_job` transaction, whose idempotency-key insert
is safe between concurrent writers. A job with a ``webhook_url`` still goes through the
registry, which checks the webhook's signing secret and host where webhooks are sent from.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from raygrade.errors import RaygradeError
from raygrade.grouped import GroupedCall
from raygrade.protocol import GradingJob, JobStatus
from raygrade.serve.http_app import _call, logger
from raygrade.serve.registry_part import JobRequest
from raygrade.tracing import extract, new_trace, span

#: The most jobs one registry call records (a group that arrived while the previous call was in flight).
MAX_JOBS_PER_CALL = 64


@dataclass(frozen=True)
class NewJob:
    """A job to record: :meth:`JobRegistryImpl.create`'s arguments.

    Attributes:
        job: The job as it is to be stored (page images already in the blob store).
        idempotency_key: The caller's key, if any.
        tenant: Its tenant.
        trace_context: W3C headers of the trace its submission joined (``{}`` when none).
        request_hash: The hash of the job as sent, kept with an idempotency key.
        nudge_with_job: Hand the batcher the job itself (no inline images to carry), so that
            it plans the job without reading it back.
    """

    job: GradingJob
    idempotency_key: str | None
    tenant: str
    trace_context: dict[str, str]
    request_hash: str | None
    nudge_with_job: bool

    @property
    def request(self) -> JobRequest:
        """The job as :func:`~raygrade.serve.registry_part.create_jobs` (and the registry's
        ``create_many``) records it."""
        return self.job, self.idempotency_key, self.tenant, self.trace_context, self.request_hash


class JobAcceptor:
    """Records jobs through the ``JobRegistry`` handle and nudges the ``Batcher`` handle, for
    the submissions that arrive together in one call each.

    Args:
        registry: ``JobRegistry`` handle (``create_many``).
        batcher: ``Batcher`` handle (``submit_many``).
        max_jobs: The most jobs per call.
        direct: ``await direct(news)`` records ``news`` from this process and returns their
            results, or returns ``None`` where it cannot (then the registry records them):
            :meth:`DirectStore.create_jobs`. Jobs with a ``webhook_url`` always go to the registry.
    """

    def __init__(self, registry, batcher, max_jobs: int = MAX_JOBS_PER_CALL, *,
                 direct: Callable[[list[NewJob]], Awaitable[list[tuple[JobStatus, bool] | RaygradeError] | None]]
                 | None = None):
        self._registry, self._batcher, self._direct = registry, batcher, direct
        self.direct_jobs = 0  # jobs recorded here, not through the registry (a test's figure)
        self._grouped: GroupedCall[NewJob, tuple[JobStatus, bool]] = GroupedCall(self._record, max_items=max_jobs)

    @property
    def calls(self) -> int:
        """Registry calls made so far."""
        return self._grouped.calls

    async def accept(self, new: NewJob) -> tuple[JobStatus, bool]:
        """Record ``new`` (durably, before this returns) and nudge the batcher to start it.

        Returns:
            ``(status, created)``: ``created`` is False for a replay of an idempotency key.

        Raises:
            RaygradeError: what :meth:`JobRegistryImpl.create` raises for this job (or, recorded
                here, :meth:`JobStore.create_job`: the same errors).
        """
        return await self._grouped(new)

    async def _record(self, news: list[NewJob]) -> list[tuple[JobStatus, bool] | BaseException]:
        # The group's spans join its first job's trace (a traced job sent alone has them all).
        parent = extract(news[0].trace_context) or new_trace()
        with span("raygrade.create", {"raygrade.jobs": len(news)}, parent=parent) as s:
            results, direct = await self._create(news)
            s.set_attribute("raygrade.create.direct", direct)
        nudges = [(r[0].id, n.job if n.nudge_with_job else None, r[0].tenant, n.trace_context)
                  for n, r in zip(news, results) if not isinstance(r, BaseException) and r[1]]
        if nudges:
            # Durable already: a lost nudge only delays these jobs until the batcher's next poll.
            with span("raygrade.nudge", {"raygrade.jobs": len(nudges)}, parent=parent):
                try:
                    await self._batcher.submit_many.remote(nudges)
                except Exception as exc:
                    logger.warning("%d jobs: batcher not reachable (%s); it will pick them up from the store",
                                   len(nudges), type(exc).__name__)
        return results

    async def _create(self, news: list[NewJob]) -> tuple[list[tuple[JobStatus, bool] | BaseException], int]:
        """Each job recorded here where ``direct`` can (no ``webhook_url``), the rest by the
        registry: their results in ``news`` order, and how many were recorded here."""
        here = [i for i, n in enumerate(news) if not n.job.options.webhook_url] if self._direct is not None else []
        done = await self._direct([news[i] for i in here]) if here and self._direct is not None else None
        if done is None:
            here, done = [], []
        self.direct_jobs += len(here)
        recorded = set(here)
        rest = [i for i in range(len(news)) if i not in recorded]
        via = await _call(self._registry.create_many.remote([news[i].request for i in rest])) if rest else []
        by_index = dict(zip(here, done)) | dict(zip(rest, via))
        return [by_index[i] for i in range(len(news))], len(here)
