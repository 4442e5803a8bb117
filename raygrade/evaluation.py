"""Agreement between machine and human grades, with bootstrap confidence intervals.

On the rubric's own grid first (:func:`grid_agreement`: exact score, within one grid step, QWK
over the grid's scores, MAE); then on three ordinal levels (0 no credit, 1 partial, 2 full),
the way SAF labels answers (Incorrect / Partially correct / Correct), for comparison with
three-level results (:func:`agreement`):

- exact agreement: share of identical levels;
- Cohen's κ (Cohen 1960) and quadratic weighted κ, QWK (Cohen 1968), by
  ``sklearn.metrics.cohen_kappa_score``;
- MAE: mean absolute score difference as a fraction of the maximum;
- 95 % intervals: percentile bootstrap over items (``scipy.stats.bootstrap``; Efron &
  Tibshirani 1993, ch. 13).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable, Sequence

#: (human score, machine score, max score) of one item.
Pair = tuple[float, float, float]


def score_level(score: float, max_score: float) -> int:
    """0 for no credit, 2 for full marks, 1 in between."""
    if score >= max_score - 1e-9:
        return 2
    return 0 if score <= 1e-9 else 1


def _kappa(h: Sequence[int], g: Sequence[int], weights: str | None, labels: Sequence[int] = (0, 1, 2)) -> float:
    if len(set(h) | set(g)) < 2:
        return 1.0 if list(h) == list(g) else 0.0
    from sklearn.metrics import cohen_kappa_score

    k = float(cohen_kappa_score(h, g, weights=weights, labels=list(labels)))
    return 0.0 if math.isnan(k) else k  # NaN when one side is constant


@dataclasses.dataclass(frozen=True)
class Agreement:
    """Agreement figures over ``n`` items (see the module docstring)."""

    n: int
    exact: float
    kappa: float
    qwk: float
    mae: float


def agreement(pairs: Sequence[Pair]) -> Agreement:
    """Agreement over ``(human, machine, max)`` triples.

    Raises:
        ValueError: ``pairs`` is empty.
    """
    if not pairs:
        raise ValueError("no graded items to compare")
    h = [score_level(a, m) for a, _, m in pairs]
    g = [score_level(b, m) for _, b, m in pairs]
    return Agreement(n=len(pairs), exact=sum(x == y for x, y in zip(h, g)) / len(h), kappa=_kappa(h, g, None),
                     qwk=_kappa(h, g, "quadratic"), mae=sum(abs(a - b) / m for a, b, m in pairs) / len(pairs))


def bootstrap_ci(pairs: Sequence[Pair], stat: Callable[[Sequence[Pair]], float], *, n_boot: int = 1000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over items resampled with replacement
    (``scipy.stats.bootstrap``, ``method="percentile"``; Efron & Tibshirani 1993, ch. 13).

    The percentile method rather than SciPy's default BCa: BCa's jackknife evaluates ``stat``
    once per item, which for a 10,000-item regrade report costs more than the resamples.

    Returns:
        ``(low, high)``; both equal the estimate for one item or when every resample gives
        the same value.

    Raises:
        ValueError: ``pairs`` is empty.
    """
    if not pairs:
        raise ValueError("no graded items to compare")
    if len(pairs) < 2:  # nothing to resample
        value = stat(pairs)
        return value, value
    import numpy as np
    from scipy.stats import bootstrap

    with warnings.catch_warnings():  # a degenerate resample distribution (all equal) warns; the interval is the value
        warnings.simplefilter("ignore", RuntimeWarning)
        res = bootstrap((np.arange(len(pairs)),), lambda idx: stat([pairs[i] for i in idx]), n_resamples=n_boot,
                        confidence_level=level, method="percentile", vectorized=False, rng=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if math.isnan(lo) or math.isnan(hi):
        value = stat(pairs)
        return value, value
    return lo, hi


def _metric(name: str, pairs: Sequence[Pair]) -> float:
    return float(getattr(agreement(pairs), name))


def agreement_with_ci(pairs: Sequence[Pair], *, n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, float]]:
    """``{metric: {"value", "lo", "hi"}}`` for exact, kappa, qwk and mae, plus ``n``."""
    point = agreement(pairs)
    out: dict[str, dict[str, float]] = {"n": {"value": point.n, "lo": point.n, "hi": point.n}}
    for name in ("exact", "kappa", "qwk", "mae"):
        lo, hi = bootstrap_ci(pairs, functools.partial(_metric, name), n_boot=n_boot, seed=seed)
        out[name] = {"value": getattr(point, name), "lo": lo, "hi": hi}
    return out


def expected_calibration_error(confidences: Sequence[float], right: Sequence[bool], bins: int = 10) -> float:
    """ECE: the item-weighted mean |accuracy − mean confidence| over equal-width confidence bins
    (Naeini et al. 2015; Guo et al. 2017).

    Raises:
        ValueError: empty input or lengths differ.
    """
    if not confidences or len(confidences) != len(right):
        raise ValueError("need one correctness flag per confidence")
    total = 0.0
    for b in range(bins):
        idx = [i for i, c in enumerate(confidences)
               if (b / bins < c <= (b + 1) / bins) or (b == 0 and c == 0)]
        if idx:
            acc = sum(bool(right[i]) for i in idx) / len(idx)
            conf = sum(confidences[i] for i in idx) / len(idx)
            total += len(idx) * abs(acc - conf)
    return total / len(confidences)


def coverage_curve(pairs: Sequence[Pair], confidences: Sequence[float],
                   coverages: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
                   ) -> list[dict[str, float]]:
    """Agreement on the most confident share of items, for each coverage.

    Coverage is the share of items *not* sent to review: keeping the top
    ``coverage`` by confidence (ties: earlier first) is what ``review_share =
    1 - coverage`` does.

    Returns:
        ``[{"coverage", "n", "exact", "qwk"}]`` in the order of ``coverages``.
    """
    order = sorted(range(len(pairs)), key=lambda i: (-confidences[i], i))
    out = []
    for c in coverages:
        k = max(1, math.ceil(c * len(pairs) - 1e-9))
        ag = agreement([pairs[i] for i in order[:k]])
        out.append({"coverage": c, "n": ag.n, "exact": ag.exact, "qwk": ag.qwk})
    return out


#: (human score, machine score, max score, grid step) of one item: agreement on the rubric's grid.
GridPair = tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class GridAgreement:
    """Agreement on the rubric's own score grid over ``n`` items.

    Attributes:
        exact: Share of items given exactly the human's score.
        within_one_step: Share within one grid step of it (``|machine − human| ≤ step``).
        qwk: Quadratic weighted kappa over the scores as fractions of the maximum, each distinct
            fraction an ordered category (Cohen 1968); one grid gives its own categories.
        mae: Mean ``|machine − human| / max``.
    """

    n: int
    exact: float
    within_one_step: float
    qwk: float
    mae: float


def grid_agreement(rows: Sequence[GridPair]) -> GridAgreement:
    """Agreement over ``(human, machine, max, step)`` items on their grids (see :class:`GridAgreement`).

    Raises:
        ValueError: ``rows`` is empty.
    """
    if not rows:
        raise ValueError("no graded items to compare")
    h = [round(a / m, 6) for a, _, m, _ in rows]
    g = [round(b / m, 6) for _, b, m, _ in rows]
    cats = {v: i for i, v in enumerate(sorted(set(h) | set(g)))}
    qwk = _kappa([cats[x] for x in h], [cats[x] for x in g], "quadratic", list(cats.values()))
    n = len(rows)
    return GridAgreement(n=n, exact=sum(abs(a - b) < 1e-6 for a, b, _, _ in rows) / n,
                         within_one_step=sum(abs(a - b) <= s + 1e-6 for a, b, _, s in rows) / n, qwk=qwk,
                         mae=sum(abs(a - b) / m for a, b, m, _ in rows) / n)


def _grid_metric(name: str, rows: Sequence[GridPair]) -> float:
    return float(getattr(grid_agreement(rows), name))


def grid_agreement_with_ci(rows: Sequence[GridPair], *, n_boot: int = 1000, seed: int = 0
                           ) -> dict[str, dict[str, float]]:
    """``{metric: {"value", "lo", "hi"}}`` for exact, within_one_step, qwk and mae on the grid
    (percentile bootstrap, :func:`bootstrap_ci`), plus ``n``."""
    point = grid_agreement(rows)
    out: dict[str, dict[str, float]] = {"n": {"value": point.n, "lo": point.n, "hi": point.n}}
    for name in ("exact", "within_one_step", "qwk", "mae"):
        lo, hi = bootstrap_ci(rows, functools.partial(_grid_metric, name),  # type: ignore[arg-type]
                              n_boot=n_boot, seed=seed)
        out[name] = {"value": getattr(point, name), "lo": lo, "hi": hi}
    return out
