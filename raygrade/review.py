"""Review routing: which grades a human should check.

A school sets the share of items it is willing to review (``JobOptions.review_share``);
the items with the lowest confidence, up to that share, are flagged ``needs_review``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


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
    k = math.ceil(share * len(confidences) - 1e-9)
    order = sorted(range(len(confidences)), key=lambda i: (confidences[i], i))
    return set(order[:k])
