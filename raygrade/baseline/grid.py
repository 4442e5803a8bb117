"""Scores on the rubric's own grid from similarity: a monotone quantile map per question.

For one question with graded examples ``(similarity s_i, score fraction y_i = score_i / max)``,
an answer of similarity ``s`` gets the fraction at the same quantile of the examples' scores as
``s`` has among the examples' similarities (quantile mapping: ``F_y⁻¹(F_s(s))``, both
distributions interpolated linearly between their points), then the nearest score of the grid.
It is monotone in ``s``, keeps the examples' spread of scores (a regression to the mean would
squeeze every grade towards the middle), and reaches every grid value between the lowest and
the highest example score. Two anchor pseudo-examples, similarity 0 → no credit and
similarity 1 → full marks (``ANCHOR_WEIGHT`` each), give the map a scale when the examples are
few or all on one level; without examples they sit at the similarities typical of no-credit and
full-marks answers (:data:`NO_EXAMPLE_ANCHORS`) and are the whole map.

Measured on SAF v2.0 (26 questions, scores in eighths of a point up to 3.5; test: its unseen
answers; examples: its training split), QWK on the real scale (``raygrade.evaluation.
grid_agreement``): all 60–140 examples per question 0.69 (three-level thresholds: 0.64); 8
examples 0.67 (0.48). Pooling the examples of other questions as a prior (shifted to the
question's mean similarity) lowered QWK at every example count tried (3, 5, 8, all), so the
anchors are the only prior.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from importlib import resources

import numpy as np

from raygrade.protocol import JobWarning, Question

#: Weight of each anchor pseudo-example (similarity 0 → 0, similarity 1 → full marks).
ANCHOR_WEIGHT = 0.5
#: The anchors' similarities for a question without examples: the median similarity of the
#: answers given no credit (0.08) and full marks (0.61) over SAF's training splits (v1.0 English,
#: v2.0). Without examples they grade SAF v2.0's unseen answers at QWK 0.22 on the grid, anchors
#: at 0 and 1 at 0.13; with examples, anchors at 0 and 1 do better (0.67 vs 0.65 with 8 examples).
NO_EXAMPLE_ANCHORS = (0.08, 0.61)


def score_grid(q: Question) -> list[float]:
    """The scores a grade of ``q`` may take: its ``score_step`` grid, else 0, the maximum and
    every score its examples use (half marks when it has none: the three levels)."""
    if (grid := q.allowed_scores()) is not None:
        return grid
    used = {round(float(e.score), 6) for e in q.examples} or {float(q.max_score) / 2}
    return sorted({0.0, float(q.max_score)} | used)


def snap(score: float, grid: Sequence[float]) -> float:
    """The grid value nearest ``score`` (the lower one on a tie)."""
    return min(grid, key=lambda g: (abs(g - score), g))


def _weighted_cdf(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    return v, (np.cumsum(w) - w / 2) / w.sum()  # mid-point plotting positions


@dataclasses.dataclass(frozen=True)
class QuantileMap:
    """Similarity → score fraction for one question (see the module docstring).

    Attributes:
        sims, sims_cdf: The examples' similarities (anchors included), sorted, and their CDF.
        fracs, fracs_cdf: The examples' score fractions, sorted, and their CDF.
        fallback: Set when the map cannot separate its examples (two or more, all at one
            similarity, with different scores: e.g. a placeholder reference answer every answer
            misses alike): then every answer gets this fraction, the examples' median, and
            :attr:`degenerate` is true. Interpolating across the tie would give every answer the
            top of it (full marks).
    """

    sims: np.ndarray
    sims_cdf: np.ndarray
    fracs: np.ndarray
    fracs_cdf: np.ndarray
    fallback: float | None = None

    @property
    def degenerate(self) -> bool:
        """Whether similarity says nothing about the score here (see :attr:`fallback`)."""
        return self.fallback is not None

    @classmethod
    def fit(cls, sims: Sequence[float], fractions: Sequence[float], anchor_weight: float = ANCHOR_WEIGHT
            ) -> QuantileMap:
        """The map for examples of similarity ``sims`` and score fraction ``fractions`` (in [0, 1]).

        Raises:
            ValueError: ``sims`` and ``fractions`` differ in length.
        """
        if len(sims) != len(fractions):
            raise ValueError("one score fraction per similarity")
        s = np.asarray([*sims, *((0.0, 1.0) if len(sims) else NO_EXAMPLE_ANCHORS)], dtype=float)
        y = np.clip(np.asarray([*fractions, 0.0, 1.0], dtype=float), 0.0, 1.0)
        w = np.asarray([1.0] * len(sims) + [anchor_weight, anchor_weight])
        fallback = None
        if len(sims) >= 2 and np.ptp(np.asarray(sims, dtype=float)) <= 1e-9 and np.ptp(y[:-2]) > 0:
            fallback = float(np.median(y[:-2]))
        return cls(*_weighted_cdf(s, w), *_weighted_cdf(y, w), fallback=fallback)

    def fraction(self, similarity: float) -> float:
        """The score fraction (0–1) for an answer of this similarity (:attr:`fallback` when degenerate)."""
        if self.fallback is not None:
            return self.fallback
        return float(np.interp(np.interp(similarity, self.sims, self.sims_cdf), self.fracs_cdf, self.fracs))


def grid_margin(score: float, grid: Sequence[float]) -> float:
    """How far ``score`` lies from the nearest point where its snapped value would change, in grid
    steps (0: on a boundary, 0.5: on a grid value, and at or beyond the grid's ends)."""
    g = sorted(grid)
    if score <= g[0] or score >= g[-1]:
        return 0.5
    i = int(np.searchsorted(g, score))
    lo, hi = g[i - 1], g[i]
    return abs(score - (lo + hi) / 2) / (hi - lo)


#: The pooled confidence map shipped with raygrade (``benchmarks/baseline_grid_calibration.py``
#: writes it): P(exact grid score) for grades at an end of the grid (the map saturated: no credit
#: or full marks) and, inside it, against :func:`grid_margin`; from leave-one-out grades of every
#: SAF training question (v1.0 English and v2.0).
CALIBRATION_FILE = "baseline_grid_calibration.json"
#: Examples' weight of the pooled hit rate when a question's own is shrunk towards it.
SHRINK_EXAMPLES = 5


@functools.cache
def pooled_calibration() -> tuple[np.ndarray, np.ndarray, float, float]:
    """``(margins, P(exact) inside the grid, P(exact) at its ends, pooled hit rate)`` of the shipped map."""
    doc = json.loads(resources.files("raygrade.data").joinpath(CALIBRATION_FILE).read_text())
    return (np.asarray(doc["margins"], dtype=float), np.asarray(doc["p_exact"], dtype=float),
            float(doc["p_exact_at_end"]), float(doc["hit_rate"]))


def question_factor(hits: Sequence[bool]) -> float:
    """How a question's grades fare against the pooled ones: its leave-one-out hit rate, shrunk
    towards the pooled rate with :data:`SHRINK_EXAMPLES` pseudo-examples, over the pooled rate
    (1.0 without examples)."""
    rate = pooled_calibration()[3]
    return ((sum(hits) + SHRINK_EXAMPLES * rate) / (len(hits) + SHRINK_EXAMPLES)) / rate


def at_end(score: float, grid: Sequence[float]) -> bool:
    """Whether ``score`` is at (or past) the lowest or highest grid value (no credit, full marks)."""
    return score <= min(grid) + 1e-9 or score >= max(grid) - 1e-9


#: Confidence of a grade from a map that cannot separate its examples (:attr:`QuantileMap.degenerate`):
#: the floor, so that any review share sends these grades first.
DEGENERATE_CONFIDENCE = 0.01


def degenerate_warning(question_id: str) -> JobWarning:
    """The job warning for a question whose map is :attr:`QuantileMap.degenerate` (named in the
    job's status; the message carries no answer text)."""
    return JobWarning(type="degenerate_reference", question_ids=[question_id], message=(
        f"question {question_id}: every graded example has the same similarity to the reference answer, so "
        f"similarity cannot grade it; its grades are the examples' median score at confidence "
        f"{DEGENERATE_CONFIDENCE} (check the reference answer; these items go to review first)"))


def grid_confidence(margin: float, end: bool, factor: float = 1.0) -> float:
    """P(the grid score equals the human's) for a grade of no credit or full marks (``end``), else
    one ``margin`` grid steps from the nearest boundary (:func:`grid_margin`), on a question
    whose :func:`question_factor` is ``factor``; in [0.01, 0.99] (interpolated, no cap plateau)."""
    margins, p, p_end, _ = pooled_calibration()
    base = p_end if end else float(np.interp(margin, margins, p))
    return round(float(np.clip(base * factor, 0.01, 0.99)), 4)


def fit_pooled_calibration(records: Sequence[tuple[float, bool, bool]], points: int = 11) -> dict:
    """The shipped map's content from ``(margin, end, hit)`` records of leave-one-out grades:
    the hit rate at the grid's ends, and inside it an isotonic regression of hit on margin
    (Zadrozny & Elkan 2002) read at ``points`` margins."""
    from sklearn.isotonic import IsotonicRegression

    inner = [r for r in records if not r[1]]
    m = np.asarray([r[0] for r in inner], dtype=float)
    y = np.asarray([float(r[2]) for r in inner])
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(m, y)
    grid = np.linspace(0.0, 0.5, points)
    ends = [float(r[2]) for r in records if r[1]]
    return {"margins": grid.round(4).tolist(), "p_exact": iso.predict(grid).round(4).tolist(),
            "p_exact_at_end": round(sum(ends) / max(1, len(ends)), 4),
            "hit_rate": round(sum(float(r[2]) for r in records) / len(records), 4),
            "records": len(records), "records_at_end": len(ends)}


def loo_fractions(sims: Sequence[float], fractions: Sequence[float]) -> list[tuple[float, float]]:
    """``(raw fraction the map of the other examples gives, the example's own fraction)`` for each
    example (leave one out; fractions of the maximum)."""
    out = []
    for i in range(len(sims)):
        others = QuantileMap.fit(list(sims[:i]) + list(sims[i + 1:]), list(fractions[:i]) + list(fractions[i + 1:]))
        out.append((others.fraction(sims[i]), float(fractions[i])))
    return out


def loo_records(outcomes: Sequence[tuple[float, float]], max_score: float, grid: Sequence[float]
                ) -> list[tuple[float, bool, bool]]:
    """``(margin, at an end, hit)`` of each leave-one-out outcome (:func:`loo_fractions`) on ``grid``."""
    out = []
    for raw, y in outcomes:
        graded = snap(raw * max_score, grid)
        out.append((grid_margin(raw * max_score, grid), at_end(graded, grid), graded == snap(y * max_score, grid)))
    return out


#: Bandwidth of the Gaussian kernel over raw score fractions (of the maximum) that weighs the
#: graded outcomes near a grade in :func:`grade_distribution`.
ERROR_BANDWIDTH = 0.08


@functools.cache
def pooled_outcomes() -> tuple[np.ndarray, np.ndarray]:
    """``(raw fractions, the human's fractions)`` of the shipped leave-one-out grades (SAF training
    questions, :data:`CALIBRATION_FILE`'s ``outcomes``)."""
    doc = json.loads(resources.files("raygrade.data").joinpath(CALIBRATION_FILE).read_text())["outcomes"]
    return np.asarray(doc["raw"], dtype=float), np.asarray(doc["human"], dtype=float)


def _nearest(human: np.ndarray, grid: np.ndarray, max_score: float) -> np.ndarray:
    """Index of the grid value nearest each human fraction × ``max_score``."""
    return np.abs(grid[None, :] - (human * max_score)[:, None]).argmin(axis=1)


@functools.lru_cache(maxsize=256)
def _pooled_nearest(grid: tuple[float, ...], max_score: float) -> np.ndarray:
    return _nearest(pooled_outcomes()[1], np.asarray(grid), max_score)  # per question, not per answer


def _kernel_histogram(raw: float, outcomes_raw: np.ndarray, nearest: np.ndarray, size: int
                      ) -> tuple[np.ndarray, float]:
    w = np.exp(-0.5 * ((outcomes_raw - raw) / ERROR_BANDWIDTH) ** 2)
    hist = np.bincount(nearest, weights=w, minlength=size)
    total = float(hist.sum())
    return (hist / total if total > 0 else hist), total


def grade_distribution(raw: float, grid: Sequence[float], max_score: float,
                       own: Sequence[tuple[float, float]] = ()) -> np.ndarray:
    """P(the human's score is ``grid[i]``) for a grade whose map gave the raw fraction ``raw``.

    A kernel estimate of the conditional distribution (Nadaraya–Watson; Gaussian kernel of
    :data:`ERROR_BANDWIDTH` over raw fractions) from graded outcomes ``(raw fraction, human
    fraction)`` snapped to ``grid``: the question's own leave-one-out outcomes ``own``
    (:func:`loo_fractions`) with their summed kernel weight ``n``, shrunk towards the pooled
    outcomes (:func:`pooled_outcomes`) as ``n / (n + SHRINK_EXAMPLES)``. Measured on SAF's unseen
    answers, routing reviews by the expected error it gives leaves the job with at least the QWK
    of confidence routing at 18 of 20 shares and at most its MAE at 18 of 20
    (``benchmarks/fidelity.py``; docs "Grading quality").

    Returns:
        One probability per grid value (sums to 1).
    """
    g = tuple(float(x) for x in grid)
    pooled, _ = _kernel_histogram(raw, pooled_outcomes()[0], _pooled_nearest(g, float(max_score)), len(g))
    if not own:
        return pooled
    arr = np.asarray(own, dtype=float)
    mine, n = _kernel_histogram(raw, arr[:, 0], _nearest(arr[:, 1], np.asarray(g), max_score), len(g))
    lam = n / (n + SHRINK_EXAMPLES)
    return lam * mine + (1 - lam) * pooled


def expected_error(distribution: np.ndarray, grid: Sequence[float], score: float) -> float:
    """Expected ``|score − the human's|`` (points) under ``distribution`` over ``grid``."""
    return round(float(distribution @ np.abs(np.asarray(grid, dtype=float) - score)), 6)


def widest_error(grid: Sequence[float], score: float) -> float:
    """The largest ``|score − g|`` over the grid (points): the expected error given to a grade
    from a degenerate map (similarity cannot place the answer, so it is routed first, as the
    job's warning says)."""
    return float(max(abs(score - min(grid)), abs(max(grid) - score)))
