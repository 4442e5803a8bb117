"""Review routing: which grades a human should check.

A school sets the share of items it is willing to review (``JobOptions.review_share``);
the items with the lowest confidence, up to that share, are flagged ``needs_review``. Or it sets
a target agreement (``JobOptions.review_target``): the fewest least confident items whose review
is expected to reach it are flagged (:func:`target_cut`). As teachers review, their agreement
with the model is measured (:func:`review_agreement`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from raygrade.protocol import GradeResult, ReviewAgreement


def review_cut(confidences: Sequence[float], share: float) -> set[int]:
    """Indices of the ``ceil(share · n)`` least confident items (ties: earlier items first).

    Args:
        confidences: One confidence in [0, 1] per graded item.
        share: Share of items to send to review, in [0, 1].

    Raises:
        ValueError: ``share`` outside [0, 1].
    """
    if not 0 <= share <= 1:
        raise ValueError("share must be in [0, 1]")
    return least_confident(confidences, math.ceil(share * len(confidences) - 1e-9))


def least_confident(confidences: Sequence[float], k: int) -> set[int]:
    """Indices of the ``k`` least confident items (ties: earlier items first)."""
    return set(sorted(range(len(confidences)), key=lambda i: (confidences[i], i))[:max(0, k)])


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
