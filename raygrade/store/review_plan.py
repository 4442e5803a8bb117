"""Which of a job's graded items are flagged for review: the share or the target of its options,
applied to the items' rows (the choice :meth:`raygrade.store.reviews.Reviews._flag_review` writes)."""

from __future__ import annotations

import math
from typing import Any

from raygrade.protocol import GradeResult, GradingJob, ReviewPlan
from raygrade.review import (
    TargetItem,
    expected_sq_error,
    most_at_risk,
    question_step,
    qwk_target_cut,
    risk,
    target_cut,
)


def target_items(rows: list[Any], job: GradingJob) -> list[TargetItem]:
    """:class:`raygrade.review.TargetItem` of each graded item row (its final score: the teacher's
    once reviewed; its expected squared error on its question's grid)."""
    steps = {q.id: question_step(q) for q in job.assessment.questions}
    out = []
    for r in rows:
        g = GradeResult.model_validate_json(r.result)
        reviewed = r.reviewed_at is not None
        sq = 0.0 if reviewed else expected_sq_error(g.expected_error, g.confidence,
                                                     steps.get(r.question_id) or g.max_score / 2)
        out.append(TargetItem(question_id=r.question_id, score=r.review_score if reviewed else g.score,
                              sq_error=sq, reviewed=reviewed))
    return out


def choose_for_review(rows: list[Any], job: GradingJob) -> tuple[set[int], ReviewPlan | None]:
    """The unreviewed items to flag, and the plan a review target made.

    Args:
        rows: The job's graded items in order, with ``question_id``, ``confidence``, ``error_share``,
            ``reviewed_at``, ``needs_review``, ``result`` (a :class:`GradeResult` as JSON) and
            ``review_score``.
        job: The job (its options and questions).

    Returns:
        ``(indices into the unreviewed rows, in their order; the plan or None)``: with
        ``review_share``, that share of the rows in all, flagged rows already reviewed counted
        first, then the unreviewed ones most at risk (:func:`raygrade.review.risk`); with
        ``review_target``, the fewest unreviewed rows whose review is expected to reach it (exact:
        :func:`raygrade.review.target_cut`; qwk: :func:`raygrade.review.qwk_target_cut`).
    """
    options = job.options
    open_rows = [r for r in rows if r.reviewed_at is None]
    reviewed_flagged = sum(1 for r in rows if r.reviewed_at is not None and r.needs_review)
    target = options.review_target
    if target is None:
        budget = math.ceil(options.review_share * len(rows) - 1e-9)
        return most_at_risk([risk(r.confidence, r.error_share, options.review_by) for r in open_rows],
                            budget - reviewed_flagged), None
    if target.metric == "qwk":
        chosen, expected = qwk_target_cut(target_items(rows, job), target.value)
        position = {id(r): i for i, r in enumerate(rows)}
        picked = {i for i, r in enumerate(open_rows) if position[id(r)] in chosen}
    else:
        picked, expected = target_cut([r.confidence for r in open_rows], target.value,
                                      right=len(rows) - len(open_rows))
    flagged = len(picked) + reviewed_flagged
    return picked, ReviewPlan(metric=target.metric, target=target.value, flagged=flagged,
                              share=flagged / len(rows) if rows else 0.0, expected=expected)
