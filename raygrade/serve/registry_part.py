"""Parts of the job registry: what its mixins (:mod:`~raygrade.serve.registry_short_path`,
:mod:`~raygrade.serve.registry_webhooks`) need of :class:`raygrade.serve.job_registry.JobRegistryImpl`,
and :func:`create_jobs`, the loop that records jobs, which the ingress's own writes on
PostgreSQL (:meth:`raygrade.serve.direct_store.DirectStore.create_jobs`) share."""

from __future__ import annotations

from typing import Any

from raygrade.config import StoreConfig
from raygrade.errors import RaygradeError
from raygrade.protocol import GradingJob, JobStatus
from raygrade.store import JobStore

#: One job to record: ``(job, idempotency_key, tenant, trace_context, request_hash)``
#: (:meth:`JobStore.create_job`'s arguments).
JobRequest = tuple[GradingJob, str | None, str, dict[str, str] | None, str | None]


class RegistryPart:
    """The registry's store, its settings, and ``_do`` (a store call on the store's thread)."""

    _config: StoreConfig
    _store: JobStore

    async def _do(self, fn, *args, **kwargs) -> Any:
        """``fn(*args, **kwargs)`` on the store's thread: :meth:`JobRegistryImpl._do`."""
        raise NotImplementedError


def create_jobs(store: JobStore, namespace: str, requests: list[JobRequest]
                ) -> list[tuple[JobStatus, bool] | RaygradeError]:
    """Record each of ``requests`` in ``store`` (:meth:`JobStore.create_job`), in a transaction of
    its own, in order.

    Returns:
        One entry per request: ``(status, created)``, or the :class:`RaygradeError` that
        :meth:`JobStore.create_job` raised for it (a quota, a key used with another body).

    Raises:
        Exception: the store failed; the jobs before the failing one stay recorded, as a retry
            with their idempotency key finds.
    """
    out: list[tuple[JobStatus, bool] | RaygradeError] = []
    for job, key, tenant, trace_context, request_hash in requests:
        try:
            out.append(store.create_job(job, key, namespace, tenant, trace_context=trace_context,
                                        request_hash=request_hash))
        except RaygradeError as err:
            out.append(err)
    return out
