"""Planning a block of submission rows into requests, and turning graded requests back into
result rows: shared by the synchronous regrade (:class:`~raygrade.bulk.udf.RegradeUDF`) and the
Batch API modes (:mod:`raygrade.bulk.batch_api`)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from raygrade.batch import BatchOutcome, GradeBatch
from raygrade.bulk.config import RegradeConfig
from raygrade.bulk.schema import RESULT_SCHEMA, error_rows, page_count, row_questions, submission_rows_to_jobs
from raygrade.config import RaygradeArgs
from raygrade.errors import MissingDependencyError, RaygradeError, ReadingError
from raygrade.planner import planner_for
from raygrade.prompts import StudentWork
from raygrade.protocol import (
    Assessment,
    GradingJob,
    ImagePage,
    ReadingMode,
    ResolvedPage,
    Submission,
    TextPage,
    resolved,
)

if TYPE_CHECKING:
    from raygrade.reading.ocr import OCRReader


class BlockPlanner:
    """Reads (OCR for text-only models), plans and unplans blocks of submission rows.

    Args:
        cfg: The regrade's configuration (provider, batcher, reading mode).
        assessment: The dataset's assessment.
        run_id: Identifies the run in the output rows and in planned job ids.
    """

    def __init__(self, cfg: RegradeConfig, assessment: Assessment, run_id: str):
        self.cfg, self.assessment, self.run_id = cfg, assessment, run_id
        # The planner reads the provider and the batcher only (a serve_llm provider's models are the app's).
        self.planner = planner_for(RaygradeArgs.model_construct(provider=cfg.provider, batcher=cfg.batcher_config(),
                                                                namespace=cfg.namespace))
        self.mode = cfg.reading_mode.resolve(cfg.provider.supports_vision)
        self._ocr: OCRReader | None = None

    def _read(self, sub: Submission) -> list[ResolvedPage]:
        if self.mode != ReadingMode.OCR:
            return [resolved(p) for p in sub.pages]
        if self._ocr is None:
            from raygrade.reading.ocr import OCRReader

            self._ocr = OCRReader()
        ocr = self._ocr
        return [TextPage(text=ocr.read(p.image_bytes())) if isinstance(p, ImagePage) else resolved(p)
                for p in sub.pages]

    async def plan_rows(self, rows: list[dict[str, Any]]
                        ) -> tuple[list[GradeBatch], dict[str, dict[str, Any]], list[dict[str, Any]]]:
        """``(batches, rows by submission_id, error rows)`` for a block of submission rows: error
        rows for submissions that cannot be read or planned; never raises for one row."""
        by_id = {str(r["submission_id"]): r for r in rows}
        subs, out = submission_rows_to_jobs(rows, self.assessment)
        if not subs:
            return [], by_id, out
        job = GradingJob(assessment=self.assessment, submissions=subs)
        works = []
        for i, sub in enumerate(subs):
            qids = [q.id for q in job.questions_for(sub)]
            try:
                pages = await asyncio.to_thread(self._read, sub)
            except Exception as exc:
                # A missing extra is named (its message holds no student text); anything else by type only.
                why = exc.message if isinstance(exc, MissingDependencyError) else type(exc).__name__
                out.extend(error_rows(by_id[sub.student_id], qids, ReadingError.error_type,
                                       f"reading failed: {why}", self.assessment))
                continue
            works.append(StudentWork(student_id=sub.student_id, alias=f"s{i + 1}", pages=pages,
                                     page_indices=list(range(len(sub.pages))), question_ids=qids))
        if not works:
            return [], by_id, out
        ok = sorted(w.student_id for w in works)
        job_id = f"regrade-{self.run_id}-{hashlib.sha1(''.join(ok).encode()).hexdigest()[:10]}"
        batches, plan_errors = self.planner.batches(job_id, job, works, self.mode == ReadingMode.VISION)
        for e in plan_errors:
            for sid in e.student_ids:
                out.extend(error_rows(by_id[sid], e.question_ids, e.type, e.message, self.assessment))
        return batches, by_id, out

    def outcome_rows(self, b: GradeBatch, outcome: BatchOutcome, by_id: dict[str, dict[str, Any]]
                     ) -> list[dict[str, Any]]:
        """Result rows (grades and errors) for a graded batch of the rows in ``by_id``."""
        rows = []
        warned = {qid: w.type for w in outcome.warnings for qid in w.question_ids}
        for g in outcome.results:
            src = by_id[g.student_id]
            rows.append({"submission_id": g.student_id, "student_id": str(src.get("student_id") or ""),
                         "question_id": g.question_id, "score": g.score, "max_score": g.max_score,
                         "feedback": g.feedback, "confidence": g.confidence, "expected_error": g.expected_error,
                         "confidence_source": g.confidence_source,
                         "confidence_calibrated": g.confidence_calibrated, "baseline_agrees": g.baseline_agrees,
                         "needs_review": False,
                         "model": g.model, "prompt_version": outcome.prompt_version,
                         "prompt_tokens": g.usage.prompt_tokens, "completion_tokens": g.usage.completion_tokens,
                         "pages": page_count(src), "batch_id": b.batch_id, "error_type": None,
                         "error_message": None, "warning": warned.get(g.question_id)})
        for e in outcome.errors:
            for sid in e.student_ids:
                rows.extend(error_rows(by_id[sid], e.question_ids, e.type, e.message, self.assessment, b.batch_id))
        return rows

    def failed_rows(self, rows: list[dict[str, Any]], exc: BaseException) -> list[dict[str, Any]]:
        """Error rows for every question of every row of a block that failed as a whole."""
        etype = exc.error_type if isinstance(exc, RaygradeError) else "internal_error"
        return [e for r in rows for e in error_rows(r, row_questions(r, self.assessment), etype,
                                                    f"block failed: {type(exc).__name__}", self.assessment)]

    def table(self, out: list[dict[str, Any]]) -> pa.Table:
        """``out`` as a :data:`~raygrade.bulk.schema.RESULT_SCHEMA` table stamped with the run and the time."""
        now = dt.datetime.now(dt.UTC).isoformat()
        for r in out:
            r["run_id"], r["graded_at"] = self.run_id, now
        return pa.Table.from_pylist([{c: r.get(c) for c in RESULT_SCHEMA.names} for r in out], schema=RESULT_SCHEMA)
