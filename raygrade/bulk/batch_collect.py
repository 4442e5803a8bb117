"""Collecting a finished batch: its answers replayed through the grader into result rows, and what
failed planned into the next round (the part of :class:`~raygrade.bulk.batch_api.BatchApiRun`
that reads the Batch API's output)."""

from __future__ import annotations

import abc
import asyncio
import json
from pathlib import Path
from typing import Any

from raygrade.batch import GradeBatch
from raygrade.bulk.config import RegradeConfig
from raygrade.bulk.plan import BlockPlanner
from raygrade.bulk.schema import error_rows
from raygrade.grading import UnmeteredLimiter
from raygrade.protocol import Assessment
from raygrade.providers.base import ChatRequest, ChatResult
from raygrade.providers.batches import RETRYABLE, BatchBackend, BatchView


class Replay:
    """Answers each :meth:`chat` with the Batch API's answer set in ``current``."""

    current: ChatResult | None = None

    async def chat(self, request: ChatRequest) -> ChatResult:
        assert self.current is not None, "a batch answer is replayed once"
        result, self.current = self.current, None
        return result

    async def close(self) -> None:
        """Nothing to release: the answers were read from the Batch API's output."""


class BatchCollection(abc.ABC):
    """Collection steps of :class:`~raygrade.bulk.batch_api.BatchApiRun` (which provides the
    state, the client and the part files)."""

    cfg: RegradeConfig
    assessment: Assessment
    dir: Path
    state: dict[str, Any]
    backend: BatchBackend
    _replay: Replay
    _grader: Any

    @abc.abstractmethod
    def save(self) -> None:
        """Write the state file."""

    @abc.abstractmethod
    def _write_parts(self, round_: int, batches: list[GradeBatch]) -> None:
        """Request and plan files for ``batches`` as parts of round ``round_``."""

    @abc.abstractmethod
    def _stage(self, name: str, blocks: BlockPlanner, rows: list[dict[str, Any]]) -> None:
        """Result rows into the staging folder."""

    # -- collection --------------------------------------------------------------------------
    def _replay_grader(self) -> Any:
        if self._grader is None:
            from raygrade.graders import build_batch_grader

            self._grader = build_batch_grader(self.cfg.provider, UnmeteredLimiter(), max_parse_retries=0,
                                              chat_provider=self._replay)
        return self._grader

    def collect(self, part: dict[str, Any], batch: BatchView) -> None:
        """Grade ``part``'s answers into the staging folder; plan what failed into the next round."""
        name = part["name"]
        answers = self.backend.answers(part, batch, self.dir)
        plans = [GradeBatch.model_validate_json(x) for x in
                 (self.dir / f"{name}.plan.jsonl").read_text().splitlines() if x.strip()]
        by_id = json.loads((self.dir / "rows.json").read_text())
        blocks = BlockPlanner(self.cfg, self.assessment, self.state["run_id"])
        rows: list[dict[str, Any]] = []
        retry: list[tuple[GradeBatch, str, str]] = []  # (what to send again, error type, message)
        for b in plans:
            line = answers.get(self.backend.custom_id(b.batch_id))
            answer = (self.backend.reply(line, b.model or self.cfg.provider.model) if line is not None
                      else ("batch_missing", "the batch returned no line for this request"))
            if isinstance(answer, tuple):
                retry.append((b, *answer))
                continue
            self._replay.current = answer
            outcome = asyncio.run(self._replay_grader().grade(b))
            again = [e for e in outcome.errors if e.type in RETRYABLE]
            outcome.errors = [e for e in outcome.errors if e.type not in RETRYABLE]
            rows += blocks.outcome_rows(b, outcome, by_id)
            if again:  # the students with items to ask again, each with those items only
                wanted = {(sid, q) for e in again for sid in e.student_ids for q in e.question_ids}
                failed = [s.model_copy(update={"question_ids": [q for q in s.question_ids
                                                                if (s.student_id, q) in wanted]})
                          for s in b.students if any(sid == s.student_id for sid, _ in wanted)]
                retry.append((b.model_copy(update={"students": failed}), again[0].type, again[0].message))
        if retry and part["round"] + 1 < self.cfg.batch_api.max_rounds:
            nxt = part["round"] + 1
            again_batches = [b.model_copy(update={"batch_id": f"{b.batch_id.split('~')[0]}~{nxt}-{i}"})
                             for i, (b, _, _) in enumerate(retry)]
            if self.cfg.batch_api.fallback == "sync":
                rows += self._grade_sync(again_batches, blocks, by_id)
            else:
                self._write_parts(nxt, again_batches)
        else:
            for b, etype, msg in retry:
                for s in b.students:
                    rows += error_rows(by_id[s.student_id], s.question_ids, etype, msg, self.assessment, b.batch_id)
        self._stage(name, blocks, rows)
        part["status"] = "collected"
        self.save()

    def _grade_sync(self, batches: list[GradeBatch], blocks: BlockPlanner, by_id: dict[str, Any]
                    ) -> list[dict[str, Any]]:
        """``batch_api.fallback: sync``: grade ``batches`` now, through the cluster's rate limiter."""
        from raygrade.graders import cluster_grader

        grader = cluster_grader(self.cfg.provider, self.cfg.namespace, priority="bulk")

        async def all_() -> list[Any]:
            return await asyncio.gather(*(grader.grade(b) for b in batches))

        return [r for b, out in zip(batches, asyncio.run(all_()), strict=True)
                for r in blocks.outcome_rows(b, out, by_id)]

