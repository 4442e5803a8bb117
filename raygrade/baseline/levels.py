"""The reference-similarity grader's three-level scale (``scale="levels"``, the earlier baseline):
two similarity thresholds map an answer onto 0, a partial score or the maximum, and the distance
to the nearest threshold is calibrated into P(level = the human's)."""

from __future__ import annotations

import bisect
import random
import statistics
from collections.abc import Callable, Sequence

from raygrade.evaluation import score_level
from raygrade.protocol import Question

#: Similarity thresholds (partial, full) used when a question has too few graded examples.
DEFAULT_THRESHOLDS = (0.35, 0.6)


def fit_thresholds(sims: Sequence[float], levels: Sequence[int]) -> tuple[float, float]:
    """Two cut points on similarity that best reproduce 3-level grades.

    Exhaustive search over midpoints between observed similarities (O(n²) pairs,
    n = examples), maximising exact agreement; ties keep the lower cut points.

    Args:
        sims: Similarity of each graded example.
        levels: Its level: 0 (no credit), 1 (partial), 2 (full).

    Returns:
        ``(t_partial, t_full)`` with ``t_partial <= t_full``.
    """
    vals = sorted(set(sims))
    cuts = [-1.0] + [(a + b) / 2 for a, b in zip(vals, vals[1:])] + [2.0]
    best = (-1, DEFAULT_THRESHOLDS[0], DEFAULT_THRESHOLDS[1])
    order = sorted(zip(sims, levels))
    svals = [s for s, _ in order]
    for i, t1 in enumerate(cuts):
        for t2 in cuts[i:]:
            lo, hi = bisect.bisect_left(svals, t1), bisect.bisect_left(svals, t2)
            hits = (sum(1 for _, y in order[:lo] if y == 0) + sum(1 for _, y in order[lo:hi] if y == 1)
                    + sum(1 for _, y in order[hi:] if y == 2))
            if hits > best[0]:
                best = (hits, t1, t2)
    return best[1], best[2]


def level_for(similarity: float, t_partial: float, t_full: float) -> int:
    """The level (0, 1, 2) a similarity falls in, given the two thresholds."""
    return 0 if similarity < t_partial else (1 if similarity < t_full else 2)


def heuristic_confidence(margin: float) -> float:
    """Uncalibrated confidence from the distance to the nearest threshold (no examples to fit on)."""
    return min(0.95, 0.5 + margin / 0.3)


def calibrate_margins(sims: Sequence[float], levels: Sequence[int], *, folds: int = 5, seed: int = 0,
                      min_examples: int = 10) -> Callable[[float], float] | None:
    """Map a grade's margin (distance to the nearest threshold) to P(level = the human's).

    Cross-fitted: for each of ``folds`` folds, thresholds are fitted on the other folds
    and the fold's examples are graded; isotonic regression (increasing, in [0, 1])
    of "level right" on margin over all held-out grades is the map. Isotonic
    regression keeps the mean, so the mean confidence equals the held-out accuracy
    (calibration in the large). Zadrozny & Elkan (2002) for isotonic calibration.

    Returns:
        The map, or ``None`` with fewer than ``min_examples`` examples.
    """
    n = len(sims)
    if n < min_examples:
        return None
    from raygrade._optional import import_optional

    IsotonicRegression = import_optional(  # noqa: N806
        "sklearn.isotonic", "baseline", "the baseline's confidence map").IsotonicRegression

    order = list(range(n))
    random.Random(seed).shuffle(order)
    margins, right = [], []
    for f in range(folds):
        held = set(order[f::folds])
        train = [i for i in range(n) if i not in held]
        if len({levels[i] for i in train}) < 2:
            continue
        t1, t2 = fit_thresholds([sims[i] for i in train], [levels[i] for i in train])
        for i in held:
            pred = level_for(sims[i], t1, t2)
            margins.append(min(abs(sims[i] - t1), abs(sims[i] - t2)))
            right.append(float(pred == levels[i]))
    if len(set(right)) < 2:
        return None
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(margins, right)
    return lambda m: float(iso.predict([m])[0])


def level_scores(q: Question) -> tuple[float, float, float]:
    """Scores given for levels 0, 1, 2: zero, the median partial score of the examples
    (half marks by default, snapped to the question's grid), and the maximum."""
    partial = [e.score for e in q.examples if score_level(e.score, q.max_score) == 1]
    mid = statistics.median(partial) if partial else q.max_score / 2
    if (grid := q.allowed_scores()) is not None:
        inner = [g for g in grid if 0 < g < q.max_score] or grid
        mid = min(inner, key=lambda g: abs(g - mid))
    return 0.0, float(mid), q.max_score
