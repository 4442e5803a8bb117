"""Grading planned batches inside Ray Data, at ``bulk`` priority in the shared token bucket.

:class:`BatchGradingUDF` is a callable class for ``Dataset.map_batches`` with an
actor pool: each actor holds one provider client and one :class:`ActorLimiter`
(priority ``bulk``, so online jobs go first and bulk fills the spare budget),
grades the rows of a block concurrently, and never raises for a row: a row that
could not be graded comes back with its error, so no block is dropped.

Input rows: ``{"batch": <GradeBatch JSON>}``. Output rows: ``batch_id``,
``results`` (JSON list of :class:`~raygrade.protocol.GradeResult`), ``errors``
(JSON list of :class:`~raygrade.protocol.GradingErrorItem`), ``prompt_tokens``,
``completion_tokens``, ``calls``, ``error_type`` (``""`` when the row succeeded).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from raygrade.config import ProviderConfig
from raygrade.batch import BatchOutcome, GradeBatch, students_error
from raygrade.graders import cluster_grader


class BatchGradingUDF:
    """``map_batches`` UDF grading :class:`GradeBatch` rows through one provider.

    Args:
        provider: The provider config (its ``rate_limit`` configures the shared bucket).
        namespace: Ray namespace of the token-bucket actor shared with the Serve app.
        max_parse_retries: Re-asks for schema-invalid items.
    """

    def __init__(self, provider: ProviderConfig | dict[str, Any], namespace: str = "raygrade",
                 max_parse_retries: int = 2, base_url: str | None = None):
        self._provider = provider if isinstance(provider, ProviderConfig) else ProviderConfig(**provider)
        # One event loop per actor, reused for every block (the HTTP client belongs to it).
        self._loop = asyncio.new_event_loop()
        self._grader = cluster_grader(self._provider, namespace, priority="bulk", max_parse_retries=max_parse_retries,
                                      base_url=base_url)

    async def _one(self, raw: str) -> dict[str, Any]:
        batch = GradeBatch.model_validate_json(raw)
        try:
            out = await self._grader.grade(batch)
        except Exception as exc:  # BatchGrader reports provider errors itself; this is anything else
            out = BatchOutcome(batch_id=batch.batch_id, results=[], usage={}, calls=0, errors=[students_error(
                batch.students, getattr(exc, "error_type", "internal_error"), f"grading failed: {type(exc).__name__}",
                batch.batch_id)])
        return {"batch_id": out.batch_id,
                "results": json.dumps([r.model_dump(mode="json") for r in out.results]),
                "errors": json.dumps([e.model_dump(mode="json") for e in out.errors]),
                "prompt_tokens": out.usage.prompt_tokens, "completion_tokens": out.usage.completion_tokens,
                "calls": out.calls, "error_type": out.errors[0].type if out.errors else ""}

    async def _all(self, raws: list[str]) -> list[dict[str, Any]]:
        return await asyncio.gather(*(self._one(r) for r in raws))

    def __call__(self, rows: dict[str, Any]) -> dict[str, list[Any]]:
        # Ray Data may call from a worker thread: run this actor's own loop there.
        asyncio.set_event_loop(self._loop)
        outs = self._loop.run_until_complete(self._all([str(r) for r in rows["batch"]]))
        return {k: [o[k] for o in outs] for k in outs[0]} if outs else {}
