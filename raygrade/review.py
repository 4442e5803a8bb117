"""Review routing: which grades a human should check.

A school sets the share of items it is willing to review (``JobOptions.review_share``); the
items most at risk, up to that share, are flagged ``needs_review``. Risk is, by default, the
grade's expected error (``GradeResult.expected_error``: the expected ``|score − the human's|``,
in points) as a share of the question's maximum (:func:`review_risk`), so that a grade likely
to be a little off on a fine grid ranks below one that may be far off; with
``JobOptions.review_by="confidence"`` it is ``1 − confidence`` (P(exact score)), the earlier
policy. Measured on SAF (``benchmarks/fidelity.py``, routing table): with the routed items
reviewed, expected-error routing gives the job lower MAE and higher QWK against the human grades
at most shares, and lower exact agreement (confidence routing maximises that one).

Or a school sets a target agreement (``JobOptions.review_target``): the fewest items whose review
is expected to reach it are flagged (exact agreement: the least confident, :func:`target_cut`;
QWK: the largest expected squared errors, :func:`qwk_target_cut`). As teachers review, their
agreement with the model is measured (:func:`review_agreement`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal

from raygrade.evaluation import GridPair, grid_agreement
from raygrade.protocol import GradeResult, Question, ReviewAgreement

ReviewBy = Literal["expected_error", "confidence"]


def question_step(question: Question) -> float:
    """The smallest gap between two scores ``question`` may take (points): its ``score_step``
    grid's, else half its maximum (the three levels no credit, partial, full)."""
    grid = question.allowed_scores()
    if grid is None or len(grid) < 2:
        return question.max_score / 2
    return min(b - a for a, b in zip(grid, grid[1:]))


def miss_error(confidence: float, step: float) -> float:
    """Expected ``|score − the human's|`` (points) of a grade right with probability
    ``confidence`` and otherwise one grid ``step`` off: ``(1 − confidence) · step``.

    A lower bound (a miss is at least one step), for graders that report only P(exact score)
    (LLM graders: the model's own number or its score tokens' probability); routing by it ranks
    a question's grades as confidence does and weighs questions by their step's share of the
    maximum.
    """
    return (1.0 - confidence) * step


def error_share(expected_error: float | None, max_score: float | None) -> float | None:
    """An expected error (points) as a share of the maximum, in [0, 1] (``None`` without one)."""
    if expected_error is None or not max_score or max_score <= 0:
        return None
    return min(1.0, expected_error / max_score)


def risk(confidence: float, share: float | None, by: ReviewBy = "expected_error") -> float:
    """How much a review of a grade is worth, in [0, 1] (higher first): its :func:`error_share`
    ``share``, or ``1 − confidence`` with ``by="confidence"`` or without a share (grades stored
    before raygrade estimated errors)."""
    return share if by == "expected_error" and share is not None else 1.0 - confidence


def review_risk(result: GradeResult, by: ReviewBy = "expected_error") -> float:
    """:func:`risk` of one grade."""
    return risk(result.confidence, error_share(result.expected_error, result.max_score), by)


def review_cut(risks: Sequence[float], share: float) -> set[int]:
    """Indices of the ``ceil(share · n)`` items most at risk (ties: earlier items first).

    Args:
        risks: One :func:`review_risk` per graded item.
        share: Share of items to send to review, in [0, 1].

    Raises:
        ValueError: ``share`` outside [0, 1].
    """
    if not 0 <= share <= 1:
        raise ValueError("share must be in [0, 1]")
    return most_at_risk(risks, math.ceil(share * len(risks) - 1e-9))


def most_at_risk(risks: Sequence[float], k: int) -> set[int]:
    """Indices of the ``k`` items of highest risk (ties: earlier items first)."""
    return set(sorted(range(len(risks)), key=lambda i: (-risks[i], i))[:max(0, k)])


def target_cut(confidences: Sequence[float], target: float, *, right: int = 0) -> tuple[set[int], float]:
    """The fewest least confident items to review so that the expected exact agreement reaches ``target``.

    With confidence = P(exact score), an unreviewed item is expected right with its confidence and
    a reviewed one is right, so reviewing the ``k`` least confident of ``n`` items gives the
    expected share ``(right + k + Σ confidence of the other n − k) / (n + right)``, which grows
    with ``k``; the smallest ``k`` reaching ``target`` is returned (ties: earlier items first).

    Args:
        confidences: One confidence in [0, 1] per unreviewed graded item.
        target: The expected exact agreement to reach, in (0, 1].
        right: Items already reviewed (counted right, not reviewed again).

    Returns:
        ``(indices to flag, the expected exact agreement with them reviewed)``; 1.0 for no items.

    Raises:
        ValueError: ``target`` outside (0, 1].
    """
    if not 0 < target <= 1:
        raise ValueError("target must be in (0, 1]")
    n = len(confidences) + right
    if n == 0:
        return set(), 1.0
    order = sorted(range(len(confidences)), key=lambda i: (confidences[i], i))
    expected = right + sum(confidences)
    k = 0
    while expected / n < target - 1e-12 and k < len(order):
        expected += 1 - confidences[order[k]]
        k += 1
    return set(order[:k]), expected / n


@dataclasses.dataclass(frozen=True)
class TargetItem:
    """One graded item as :func:`qwk_target_cut` weighs it.

    Attributes:
        question_id: Its question (QWK is expected per question, then averaged).
        score: Its final score (points): the model's, or the teacher's once reviewed.
        sq_error: Its expected squared error if left unreviewed (points², :func:`expected_sq_error`).
        reviewed: A teacher has reviewed it (its score is the teacher's; it is not flagged again).
    """

    question_id: str
    score: float
    sq_error: float
    reviewed: bool = False


def expected_sq_error(expected_error: float | None, confidence: float, step: float) -> float:
    """Expected ``(score − the human's)²`` (points²) of a grade from its expected absolute error
    ``E|e|`` (``GradeResult.expected_error``, else :func:`miss_error`) and the grid ``step``:
    ``max(E|e| · step, (π/2) · E|e|²)``.

    ``E|e| · step`` is exact when a miss is one step off (``E|e| = (1 − p)·step``, ``E[e²] =
    (1 − p)·step²``) and a lower bound on a grid (``|e| ≥ step`` whenever ``e ≠ 0``); ``(π/2)·E|e|²``
    is ``E[e²]`` of a normal error with that mean absolute value (``E|e| = σ·√(2/π)``), the case
    of misses spread over several steps of a fine grid. Both are below ``E[e²]`` of a grader
    that is sometimes far off, so targets estimated from them are optimistic (measured in
    ``docs/review.md``).
    """
    e = max(0.0, expected_error if expected_error is not None else miss_error(confidence, step))
    return max(e * step, math.pi / 2 * e * e)


def qwk_target_cut(items: Sequence[TargetItem], target: float) -> tuple[set[int], float]:
    """The fewest items to review so that the expected quadratic-weighted kappa between the final
    scores and the teacher's, per question and averaged over questions, reaches ``target``.

    Per question ``q`` with ``n`` items, weighted kappa (Cohen 1968) with squared weights is
    ``1 − MSE / (Var(a) + Var(h) + (ā − h̄)²)``: its chance term, the mean squared difference
    over all pairs of the two raters' scores, is that sum of variances and squared mean gap
    (population moments); ``a`` the final scores, ``h`` the teacher's. The
    expected MSE is ``Σ sq_error / n`` over the unreviewed items (a reviewed item's score is the
    teacher's); the teacher's scores are taken as the model's plus independent errors, so
    ``Var(h) = Var(a) + mean sq_error`` and ``h̄ = ā``: the chance term is
    ``D = 2·Var(a) + Σ sq_error / n``, fixed from the grades before any review. Each unreviewed
    item then adds ``sq_error / (n · D)`` to its question's QWK and ``1 / #questions`` of that to
    the mean: the items of largest gain are taken until the expected mean reaches ``target``
    (ties: earlier items first). A question whose ``D`` is 0 expects no disagreement (QWK 1).

    Args:
        items: Every graded item of the job (reviewed ones included: they count as right).
        target: The expected mean per-question QWK to reach, in (0, 1].

    Returns:
        ``(indices of unreviewed items to flag, the expected mean QWK with them reviewed)``; 1.0
        for no items.

    Raises:
        ValueError: ``target`` outside (0, 1].
    """
    if not 0 < target <= 1:
        raise ValueError("target must be in (0, 1]")
    by_q: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_q.setdefault(it.question_id, []).append(i)
    if not by_q:
        return set(), 1.0
    kappa, gain = {}, {}
    for q, idx in by_q.items():
        n = len(idx)
        mean = sum(items[i].score for i in idx) / n
        var = sum((items[i].score - mean) ** 2 for i in idx) / n
        noise = sum(items[i].sq_error for i in idx) / n   # what a teacher would disagree by, all unreviewed
        chance = 2 * var + noise
        open_err = sum(items[i].sq_error for i in idx if not items[i].reviewed)
        kappa[q] = 1.0 if chance <= 0 else 1.0 - open_err / (n * chance)
        for i in idx:
            if not items[i].reviewed:
                gain[i] = 0.0 if chance <= 0 else items[i].sq_error / (n * chance) / len(by_q)
    expected = sum(kappa.values()) / len(by_q)
    picked: set[int] = set()
    for i in sorted(gain, key=lambda i: (-gain[i], i)):
        if expected >= target - 1e-12 or gain[i] <= 0:
            break  # reached, or nothing left that a review is expected to change
        picked.add(i)
        expected += gain[i]
    return picked, min(1.0, expected)


def review_agreement(results: list[GradeResult]) -> ReviewAgreement | None:
    """Teacher against model on the reviewed ``results`` (``None`` when none is reviewed)."""
    pairs = [(r.review.score, r.model_score if r.model_score is not None else r.score, r.max_score)
             for r in results if r.review is not None]
    if not pairs:
        return None
    return ReviewAgreement(reviewed=len(pairs),
                           exact=sum(math.isclose(t, m, abs_tol=1e-9) for t, m, _ in pairs) / len(pairs),
                           mae=sum(abs(t - m) for t, m, _ in pairs) / len(pairs),
                           mae_of_max=sum(abs(t - m) / mx for t, m, mx in pairs) / len(pairs))


#: Shares of a job routed to review that :func:`routing_curve` reports.
ROUTING_SHARES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


def routing_curve(rows: Sequence[GridPair], risks: Sequence[float], shares: Sequence[float] = ROUTING_SHARES
                  ) -> list[dict[str, Any]]:
    """Agreement with the human grades when the items of highest ``risks`` are reviewed.

    Args:
        rows: ``(human, machine, max, step)`` per graded item (:data:`raygrade.evaluation.GridPair`).
        risks: One :func:`risk` per item.
        shares: Shares of the items routed to review (:func:`review_cut`).

    Returns:
        Per share: ``{"share", "reviewed", "kept", "after_review"}``; ``kept`` is the grid agreement
        (:class:`raygrade.evaluation.GridAgreement` as a dict: exact, within_one_step, pooled QWK,
        MAE of the maximum) on the items not routed (``None`` when none is left), ``after_review``
        on every item with the routed ones given the human's score (what the job's results are
        once the teacher has reviewed them).

    Raises:
        ValueError: ``rows`` and ``risks`` differ in length, or ``rows`` is empty.
    """
    if len(rows) != len(risks):
        raise ValueError("one risk per row")
    out = []
    for share in shares:
        routed = review_cut(risks, share)
        kept = [r for i, r in enumerate(rows) if i not in routed]
        after = [(h, h if i in routed else m, mx, st) for i, (h, m, mx, st) in enumerate(rows)]
        out.append({"share": share, "reviewed": len(routed),
                    "kept": dataclasses.asdict(grid_agreement(kept)) if kept else None,
                    "after_review": dataclasses.asdict(grid_agreement(after))})
    return out
