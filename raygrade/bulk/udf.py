"""The grading actors of bulk regrades: ``Dataset.map_batches`` callable classes.

Each actor holds one grader (:func:`raygrade.graders.cluster_grader`) reserving at
``bulk`` priority in the cluster's shared rate limiter (online jobs go first; bulk fills
the spare budget) and one event loop reused for every block. Neither class raises for
a row: what could not be graded comes back as rows carrying the error's type, so no
block is dropped and the job does not fail.

- :class:`RegradeUDF`: submission rows in (:data:`~raygrade.bulk.schema.SUBMISSION_SCHEMA`),
  result rows out; plans its block itself. What ``jobs/regrade.py`` runs.
- :class:`BatchGradingUDF`: already planned batches in (``{"batch": <GradeBatch JSON>}``),
  one row per batch out (``batch_id``, ``results`` and ``errors`` as JSON lists,
  ``prompt_tokens``, ``completion_tokens``, ``calls``, ``error_type``, ``""`` when it
  succeeded); for loads built from the same batches as other systems
  (``benchmarks/rate_limit.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

import pyarrow as pa

from raygrade.batch import BatchOutcome, GradeBatch, students_error
from raygrade.bulk.config import RegradeConfig
from raygrade.bulk.plan import BlockPlanner
from raygrade.config import ProviderConfig
from raygrade.graders import cluster_grader
from raygrade.protocol import Assessment

logger = logging.getLogger(__name__)
T = TypeVar("T")


class _GradingActor:
    """One grader at ``bulk`` priority and one event loop, shared by the UDFs below."""

    def __init__(self, provider: ProviderConfig, namespace: str, max_parse_retries: int,
                 model_deployment: tuple[str, str] | None):
        self.loop = asyncio.new_event_loop()  # the HTTP client belongs to this loop: reuse it for every block
        handle = None
        if model_deployment is not None:  # a model served in a Serve application: by handle, on any node
            from ray import serve

            app_name, deployment = model_deployment
            handle = serve.get_deployment_handle(deployment, app_name)
        self.grader = cluster_grader(provider, namespace, priority="bulk", max_parse_retries=max_parse_retries,
                                     model_handle=handle)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        asyncio.set_event_loop(self.loop)  # Ray Data may call from a worker thread: run this actor's loop there
        return self.loop.run_until_complete(coro)

    async def _grade(self, batch: GradeBatch) -> BatchOutcome:
        """``grader.grade(batch)``; an unexpected exception becomes an error for the batch's items."""
        try:
            return await self.grader.grade(batch)
        except Exception as exc:  # BatchGrader reports provider errors itself; this is anything else
            logger.exception("batch %s failed", batch.batch_id)
            return BatchOutcome(batch_id=batch.batch_id, results=[], usage={}, calls=0, errors=[students_error(
                batch.students, getattr(exc, "error_type", "internal_error"), f"grading failed: {type(exc).__name__}",
                batch.batch_id)])


class BatchGradingUDF(_GradingActor):
    """``map_batches`` UDF grading planned :class:`~raygrade.batch.GradeBatch` rows through one provider.

    Args:
        provider: The provider config (its ``rate_limit`` configures the shared bucket).
        namespace: Ray namespace of the rate-limiter actor shared with the Serve app.
        max_parse_retries: Re-asks for schema-invalid items.
        model_deployment: ``(application, deployment)`` of the provider's model when it is a
            deployment of a Serve application.
    """

    def __init__(self, provider: ProviderConfig | dict[str, Any], namespace: str = "raygrade",
                 max_parse_retries: int = 2, model_deployment: tuple[str, str] | None = None):
        provider = provider if isinstance(provider, ProviderConfig) else ProviderConfig(**provider)
        super().__init__(provider, namespace, max_parse_retries, model_deployment)

    async def _one(self, raw: str) -> dict[str, Any]:
        out = await self._grade(GradeBatch.model_validate_json(raw))
        return {"batch_id": out.batch_id,
                "results": json.dumps([r.model_dump(mode="json") for r in out.results]),
                "errors": json.dumps([e.model_dump(mode="json") for e in out.errors]),
                "prompt_tokens": out.usage.prompt_tokens, "completion_tokens": out.usage.completion_tokens,
                "calls": out.calls, "error_type": out.errors[0].type if out.errors else ""}

    async def _all(self, raws: list[str]) -> list[dict[str, Any]]:
        return await asyncio.gather(*(self._one(r) for r in raws))

    def __call__(self, rows: dict[str, Any]) -> dict[str, list[Any]]:
        outs = self._run(self._all([str(r) for r in rows["batch"]]))
        return {k: [o[k] for o in outs] for k in outs[0]} if outs else {}


class RegradeUDF(_GradingActor):
    """``map_batches`` callable class: grades a block of submission rows, returns result rows
    (:data:`~raygrade.bulk.schema.RESULT_SCHEMA`).

    Each block's submissions are read (OCR for text-only models), planned by
    :class:`~raygrade.bulk.plan.BlockPlanner` and graded concurrently (``batches_in_flight``).

    Args:
        config: :class:`~raygrade.bulk.config.RegradeConfig` as a dict.
        assessment: The dataset's assessment as a dict.
        run_id: Identifies this run in the output rows.
    """

    def __init__(self, config: dict[str, Any], assessment: dict[str, Any], run_id: str):
        self.cfg = RegradeConfig.model_validate(config)
        super().__init__(self.cfg.provider, self.cfg.namespace, self.cfg.batcher_config().max_parse_retries,
                         self.cfg.model_deployment)
        self.blocks = BlockPlanner(self.cfg, Assessment.model_validate(assessment), run_id)

    def __call__(self, block: pa.Table) -> pa.Table:
        rows = block.to_pylist()
        try:
            out = self._run(self._grade_rows(rows))
        except Exception as exc:  # never fail the job for one block: error rows instead
            logger.exception("block failed")
            out = self.blocks.failed_rows(rows, exc)
        return self.blocks.table(out)

    async def _grade_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        batches, by_id, out = await self.blocks.plan_rows(rows)
        sem = asyncio.Semaphore(self.cfg.batches_in_flight)

        async def grade(b: GradeBatch) -> tuple[GradeBatch, BatchOutcome]:
            async with sem:
                return b, await self._grade(b)

        for b, outcome in await asyncio.gather(*(grade(b) for b in batches)):
            out.extend(self.blocks.outcome_rows(b, outcome, by_id))
        return out
