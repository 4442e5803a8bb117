"""Which of a job's graded items are flagged for review: the share or the target of its options
and its random audit sample, applied to the items' rows (the choice
:meth:`raygrade.store.reviews.Reviews._flag_review` writes), and the job's confidences
recalibrated from its reviewed audit items (:mod:`raygrade.recalibration`)."""

from __future__ import annotations

import math
from typing import Any

from raygrade.protocol import ConfidenceRecalibration, GradeResult, GradingJob, ReviewPlan
from raygrade.recalibration import Recalibration, fit_recalibration, is_audit
from raygrade.review import (
    TargetItem,
    expected_sq_error,
    most_at_risk,
    question_step,
    qwk_target_cut,
    risk,
    target_cut,
)


def recalibration_of(job_id: str, share: float, graded: list[tuple[str, str, float, float | None, float]]
                     ) -> Recalibration:
    """The job's recalibration from its reviewed audit items.

    Args:
        job_id: The job (its audit sample is drawn from its id).
        share: Its ``review_audit_share``.
        graded: ``(student_id, question_id, confidence, the teacher's score or None, the model's score)``
            per graded item.
    """
    return fit_recalibration([(conf, math.isclose(teacher, model, abs_tol=1e-9))
                              for sid, qid, conf, teacher, model in graded
                              if teacher is not None and is_audit(job_id, sid, qid, share)])


def target_items(rows: list[Any], job: GradingJob, audit: set[int] | None = None) -> list[TargetItem]:
    """:class:`raygrade.review.TargetItem` of each graded item row (its final score: the teacher's
    once reviewed; its expected squared error on its question's grid); the rows in ``audit`` are
    flagged anyway, so they count as reviewed."""
    steps = {q.id: question_step(q) for q in job.assessment.questions}
    audit = audit or set()
    out = []
    for i, r in enumerate(rows):
        g = GradeResult.model_validate_json(r.result)
        reviewed = r.reviewed_at is not None
        sq = 0.0 if reviewed or i in audit else expected_sq_error(g.expected_error, g.confidence,
                                                                  steps.get(r.question_id) or g.max_score / 2)
        out.append(TargetItem(question_id=r.question_id, score=r.review_score if reviewed else g.score,
                              sq_error=sq, reviewed=reviewed or i in audit))
    return out


def choose_for_review(rows: list[Any], job: GradingJob, job_id: str) -> tuple[set[int], ReviewPlan | None]:
    """The unreviewed items to flag, and the plan a review target made.

    Args:
        rows: The job's graded items in order, with ``student_id``, ``question_id``, ``confidence``,
            ``error_share``, ``reviewed_at``, ``needs_review``, ``result`` (a :class:`GradeResult` as
            JSON) and ``review_score``.
        job: The job (its options and questions).
        job_id: Its id (the audit sample's seed).

    Returns:
        ``(indices into the unreviewed rows, in their order; the plan or None)``: the unreviewed rows
        of the audit sample (``review_audit_share``), and besides them, with ``review_share``, that
        share of the rows in all (flagged rows already reviewed counted first, audit rows not), the
        unreviewed ones most at risk (:func:`raygrade.review.risk`); with ``review_target``, the
        fewest unreviewed rows whose review is expected to reach it, the audit rows counted as
        reviewed (exact: :func:`raygrade.review.target_cut`; qwk: :func:`raygrade.review.qwk_target_cut`).
        Confidences go through the job's recalibration (:func:`recalibration_of`) once audit rows
        are reviewed.
    """
    options = job.options
    share = options.review_audit_share
    audit = {i for i, r in enumerate(rows) if is_audit(job_id, r.student_id, r.question_id, share)}
    recal = recalibration_of(job_id, share, [  # only reviewed audit rows' results are read
        (r.student_id, r.question_id, r.confidence, r.review_score, GradeResult.model_validate_json(r.result).score)
        for i, r in enumerate(rows) if i in audit and r.reviewed_at is not None])
    open_at = [i for i, r in enumerate(rows) if r.reviewed_at is None]
    audit_open = {k for k, i in enumerate(open_at) if i in audit}
    candidates = [k for k in range(len(open_at)) if k not in audit_open]  # positions in open_at
    reviewed_flagged = sum(1 for i, r in enumerate(rows) if r.reviewed_at is not None and r.needs_review
                           and i not in audit)
    target = options.review_target
    if target is None:
        budget = math.ceil(options.review_share * len(rows) - 1e-9)
        ranked = most_at_risk([risk(recal.apply(rows[open_at[k]].confidence), rows[open_at[k]].error_share,
                                    options.review_by) for k in candidates], budget - reviewed_flagged)
        return audit_open | {candidates[j] for j in ranked}, None
    if target.metric == "qwk":
        chosen, expected = qwk_target_cut(target_items(rows, job, audit), target.value)
        picked = {k for k, i in enumerate(open_at) if i in chosen}
    else:
        found, expected = target_cut([recal.apply(rows[open_at[k]].confidence) for k in candidates], target.value,
                                     right=len(rows) - len(candidates))
        picked = {candidates[j] for j in found}
    flagged = len(picked | audit_open) + sum(1 for r in rows if r.reviewed_at is not None and r.needs_review)
    return picked | audit_open, ReviewPlan(metric=target.metric, target=target.value, flagged=flagged,
                                           share=flagged / len(rows) if rows else 0.0, expected=expected)


def with_audits(job_id: str, share: float, results: list[GradeResult]
                ) -> tuple[list[GradeResult], ConfidenceRecalibration | None]:
    """A job's final results with their ``audit`` flags and, once audit items are reviewed, their
    ``calibrated_confidence`` and the job's recalibration (``None`` before)."""
    recal = recalibration_of(job_id, share, [
        (r.student_id, r.question_id, r.confidence, r.review.score if r.review is not None else None,
         r.model_score if r.model_score is not None else r.score) for r in results])
    out = [r.model_copy(update={"audit": is_audit(job_id, r.student_id, r.question_id, share),
                                "calibrated_confidence": recal.apply(r.confidence) if recal.audited else None})
           for r in results]
    if not recal.audited:
        return out, None
    return out, ConfidenceRecalibration(audited=recal.audited, slope=recal.slope, intercept=recal.intercept)

