"""The job registry's short path (a mixin of :class:`raygrade.serve.job_registry.JobRegistryImpl`):
a batcher's consecutive store calls in one registry call, and calls of several jobs grouped in one."""

from __future__ import annotations

from typing import Any

from raygrade.batch import BatchOutcome, GradeBatch
from raygrade.errors import RaygradeError
from raygrade.protocol import GradingErrorItem, GradingJob, JobState, JobStatus
from raygrade.serve.registry_part import RegistryPart
from raygrade.tracing import joined

#: The registry's methods a batcher may group in one :meth:`ShortPath.call_many`: those it
#: calls once or more per job (planning, and every batch's completion).
GROUPED_CALLS = frozenset({"plan_and_lease", "complete_and_finish", "complete_and_lease", "complete_batch"})


class ShortPath(RegistryPart):
    """Combined calls over ``self._store`` on the registry's store thread (``self._do``)."""

    async def call_many(self, calls: list[tuple[str, tuple, dict[str, Any], dict[str, str]]]) -> list[Any]:
        """Several of the batcher's calls in one (:class:`raygrade.serve.batcher.HandleCalls`
        groups them): ``(method name, args, kwargs, trace_context)`` each, the method one of
        :data:`GROUPED_CALLS`, run one after another as if called one by one, each in the trace
        of its caller (``trace_context``: W3C headers, ``{}`` for none).

        Returns:
            One entry per call: its result, or the exception it raised (a :class:`RaygradeError`
            as it is; any other as a ``RuntimeError`` naming only its type and the method).

        Raises:
            ValueError: a method that is not one of :data:`GROUPED_CALLS`.
        """
        if unknown := {name for name, *_ in calls} - GROUPED_CALLS:
            raise ValueError(f"not callable in a group: {sorted(unknown)}")
        results: list[Any] = []
        for name, args, kwargs, trace_context in calls:
            try:
                with joined(trace_context):
                    results.append(await getattr(self, name)(*args, **kwargs))
            except RaygradeError as err:
                results.append(err)
            except Exception as exc:  # a store failure: its message may quote a row
                results.append(RuntimeError(f"{name} failed: {type(exc).__name__}"))
        return results

    # Each runs its store calls one after another on the store's thread, in their own
    # transactions as when called one by one (a crash between them leaves what the separate
    # calls would have left); they save the batcher a round trip through Serve each.
    async def status_and_job(self, job_id: str) -> tuple[JobStatus, GradingJob | None]:
        """The job's status and, while it is queued, the job as stored (what a batcher needs to
        plan it): :meth:`JobStore.status` then :meth:`JobStore.get_job`. Raises ``NotFoundError``."""
        def status_and_job():
            status = self._store.status(job_id)
            return status, self._store.get_job(job_id) if status.state == JobState.QUEUED else None

        return await self._do(status_and_job)

    async def plan_and_lease(self, job_id: str, planned: list[GradeBatch], errors: list[GradingErrorItem],
                             model: str | None, owner: str, lease_s: float, limit: int) -> list[GradeBatch]:
        """:meth:`JobStore.plan_and_lease`: the plan recorded with its first ``limit`` batches leased
        to ``owner`` in one transaction (a plan recorded before, by another batcher, is not
        recorded again; its batches are leased as any pending batch)."""
        return await self._do(self._store.plan_and_lease, job_id, planned, errors, model, owner, lease_s, limit)

    async def complete_and_finish(self, job_id: str, outcome: BatchOutcome, replica: str | None = None
                                  ) -> tuple[dict[str, int], JobStatus | None]:
        """:meth:`complete_batch`, then :meth:`finish_if_complete`: for what a batcher expects to
        be the job's last batch. Returns the counts and the terminal status (``None`` while
        batches are still open, e.g. leased by another batcher)."""
        def complete_and_finish():
            counts = self._store.complete_batch(job_id, outcome, replica)
            return counts, self._store.finish_if_complete(job_id)

        return await self._do(complete_and_finish)

    async def complete_and_lease(self, job_id: str, outcome: BatchOutcome, replica: str | None, owner: str,
                                 lease_s: float, limit: int) -> tuple[dict[str, int], list[GradeBatch]]:
        """:meth:`complete_batch`, then :meth:`lease_batches` of up to ``limit`` batches to
        ``owner``: a batch's slot handed to the job's next batch in the same round trip. Returns the
        counts and the batches leased (fewer than ``limit``: none is pending now)."""
        def complete_and_lease():
            counts = self._store.complete_batch(job_id, outcome, replica)
            return counts, self._store.lease_batches(job_id, owner, lease_s, limit)

        return await self._do(complete_and_lease)

