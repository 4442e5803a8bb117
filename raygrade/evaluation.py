"""Agreement between machine and human grades, with bootstrap confidence intervals.

On the rubric's own grid first (:func:`grid_agreement`: exact score, within one grid step, QWK
over the scores as fractions of the maximum, MAE); then on three ordinal levels (0 no credit,
1 partial, 2 full), the way SAF labels answers (Incorrect / Partially correct / Correct), for
comparison with three-level results (:func:`agreement`):

- exact agreement: share of identical scores (levels);
- Cohen's κ (Cohen 1960) and quadratic weighted κ, QWK (Cohen 1968), with the weights
  ``(x_i − x_j)²`` on the scores' *values* (:func:`quadratic_weighted_kappa`): on one question's
  grid this is the QWK over the whole grid (every score from 0 to the maximum in steps, used or
  not; sklearn's ``cohen_kappa_score`` gives the same number when passed all the grid's labels),
  and questions on different grids pool on fractions of their maxima;
- QWK per question, averaged (:func:`per_question_qwk`): the headline a school can compare
  across assessments; the QWK of all items pooled mixes questions' difficulty into agreement and
  flatters (SAF v2.0: 0.644 pooled where the per-question mean is 0.512);
- MAE: mean absolute score difference as a fraction of the maximum;
- 95 % intervals: percentile bootstrap (``scipy.stats.bootstrap``; Efron & Tibshirani 1993,
  ch. 13), over items for pooled figures and over questions for the per-question mean.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

#: (human score, machine score, max score) of one item.
Pair = tuple[float, float, float]
#: A figure with its interval: ``{"value", "lo", "hi"}``.
Interval = dict[str, float]

def score_level(score: float, max_score: float) -> int:
    """0 for no credit, 2 for full marks, 1 in between."""
    if score >= max_score - 1e-9:
        return 2
    return 0 if score <= 1e-9 else 1


def quadratic_weighted_kappa(human: Any, machine: Any, axis: int = -1) -> Any:
    """QWK with weights ``(x_i − x_j)²`` on the scores' values (Cohen 1968), along ``axis``.

    In closed form, ``κ = 1 − mean((h − g)²) / (var h + var g + (mean h − mean g)²)``: the
    weighted disagreement observed over the one expected were the two graders independent
    (population variances). Scores never given add nothing, so no label set is needed; for
    equally spaced labels it equals ``sklearn.metrics.cohen_kappa_score(weights="quadratic")``
    over every label between the lowest and highest. Both graders constant: 1.0 when they
    agree, else 0.0 (chance level, never NaN).

    Args:
        human, machine: Arrays of scores of one shape (any units; fractions of the maximum to pool
            questions on different scales).
        axis: The items' axis (others are batches, e.g. bootstrap resamples).

    Returns:
        A float for 1-D input, else an array over the other axes.
    """
    h, g = np.asarray(human, dtype=float), np.asarray(machine, dtype=float)
    observed = np.mean((h - g) ** 2, axis=axis)
    expected = np.var(h, axis=axis) + np.var(g, axis=axis) + (np.mean(h, axis=axis) - np.mean(g, axis=axis)) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        k = np.where(expected > 1e-18, 1.0 - observed / np.where(expected > 1e-18, expected, 1.0),
                     np.where(observed <= 1e-18, 1.0, 0.0))
    return float(k) if np.ndim(k) == 0 else k


def _cohen_kappa(h: np.ndarray, g: np.ndarray, axis: int = -1, levels: int = 3) -> Any:
    """Unweighted Cohen's κ (Cohen 1960) over integer levels ``0..levels-1`` along ``axis``."""
    po = np.mean(h == g, axis=axis)
    pe = sum(np.mean(h == k, axis=axis) * np.mean(g == k, axis=axis) for k in range(levels))
    with np.errstate(invalid="ignore", divide="ignore"):
        k = np.where(pe < 1 - 1e-12, (po - pe) / np.where(pe < 1 - 1e-12, 1 - pe, 1.0), np.where(po >= 1, 1.0, 0.0))
    return float(k) if np.ndim(k) == 0 else k


@dataclasses.dataclass(frozen=True)
class Agreement:
    """Agreement figures over ``n`` items (see the module docstring)."""

    n: int
    exact: float
    kappa: float
    qwk: float
    mae: float


def _level_arrays(pairs: Sequence[Pair]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not pairs:
        raise ValueError("no graded items to compare")
    h = np.asarray([score_level(a, m) for a, _, m in pairs], dtype=float)
    g = np.asarray([score_level(b, m) for _, b, m in pairs], dtype=float)
    err = np.asarray([abs(a - b) / m for a, b, m in pairs], dtype=float)
    return h, g, err


def _level_stats(h: np.ndarray, g: np.ndarray, err: np.ndarray, axis: int = -1) -> dict[str, Any]:
    return {"exact": np.mean(h == g, axis=axis), "kappa": _cohen_kappa(h, g, axis),
            "qwk": quadratic_weighted_kappa(h, g, axis), "mae": np.mean(err, axis=axis)}


def agreement(pairs: Sequence[Pair]) -> Agreement:
    """Agreement on three levels over ``(human, machine, max)`` triples.

    Raises:
        ValueError: ``pairs`` is empty.
    """
    h, g, err = _level_arrays(pairs)
    st = _level_stats(h, g, err)
    return Agreement(n=len(pairs), **{k: float(v) for k, v in st.items()})


def _percentile_ci(data: tuple[np.ndarray, ...], stat: Callable[..., Any], *, n_boot: int, level: float,
                   seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of a vectorized ``stat(*arrays, axis)`` over paired rows."""
    from scipy.stats import bootstrap

    n = len(data[0])
    if n < 2:
        value = float(stat(*data, axis=-1))
        return value, value
    with warnings.catch_warnings():  # a degenerate resample distribution (all equal) warns; the interval is the value
        warnings.simplefilter("ignore", RuntimeWarning)
        res = bootstrap(data, stat, n_resamples=n_boot, confidence_level=level, method="percentile", paired=True,
                        vectorized=True, batch=max(1, 4_000_000 // n), rng=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if math.isnan(lo) or math.isnan(hi):
        value = float(stat(*data, axis=-1))
        return value, value
    return lo, hi


def bootstrap_ci(pairs: Sequence[Any], stat: Callable[[Sequence[Any]], float], *, n_boot: int = 1000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of any ``stat`` over items resampled with replacement
    (``scipy.stats.bootstrap``, ``method="percentile"``; Efron & Tibshirani 1993, ch. 13); it
    calls ``stat`` once per resample, so the figures below use vectorized statistics instead.

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

    def per_resample(idx: np.ndarray, axis: int = -1) -> Any:
        if idx.ndim == 1:
            return stat([pairs[int(i)] for i in idx])
        return np.asarray([stat([pairs[int(i)] for i in row]) for row in idx])

    return _percentile_ci((np.arange(len(pairs)),), per_resample, n_boot=n_boot, level=level, seed=seed)


def _with_ci(data: tuple[np.ndarray, ...], stats: Callable[..., dict[str, Any]], names: Sequence[str], *,
             n_boot: int, seed: int, level: float = 0.95) -> dict[str, Interval]:
    point = stats(*data, axis=-1)
    out: dict[str, Interval] = {}
    for name in names:
        lo, hi = _percentile_ci(data, lambda *a, axis=-1, name=name: stats(*a, axis=axis)[name], n_boot=n_boot,
                                level=level, seed=seed)
        out[name] = {"value": float(point[name]), "lo": lo, "hi": hi}
    return out


def agreement_with_ci(pairs: Sequence[Pair], *, n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, float]]:
    """``{metric: {"value", "lo", "hi"}}`` on three levels for exact, kappa, qwk and mae, plus ``n``
    (percentile bootstrap over items, vectorized).

    Raises:
        ValueError: ``pairs`` is empty.
    """
    data = _level_arrays(pairs)
    out: dict[str, dict[str, float]] = {"n": {"value": len(pairs), "lo": len(pairs), "hi": len(pairs)}}
    out.update(_with_ci(data, _level_stats, ("exact", "kappa", "qwk", "mae"), n_boot=n_boot, seed=seed))
    return out


def mean_with_ci(values: Sequence[float], *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> Interval:
    """The mean of ``values`` (e.g. 0/1 flags: a share) with its percentile bootstrap interval.

    Raises:
        ValueError: ``values`` is empty.
    """
    if not len(values):
        raise ValueError("no values")
    v = np.asarray(values, dtype=float)
    lo, hi = _percentile_ci((v,), lambda x, axis=-1: np.mean(x, axis=axis), n_boot=n_boot, level=level, seed=seed)
    return {"value": float(v.mean()), "lo": lo, "hi": hi}


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
        qwk: Quadratic weighted kappa over the scores as fractions of the maximum
            (:func:`quadratic_weighted_kappa`; the whole grid, used or not). Over several
            questions this is the *pooled* QWK; see :func:`per_question_qwk` for the headline.
        mae: Mean ``|machine − human| / max``.
    """

    n: int
    exact: float
    within_one_step: float
    qwk: float
    mae: float


def _grid_arrays(rows: Sequence[GridPair]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not rows:
        raise ValueError("no graded items to compare")
    a = np.asarray(rows, dtype=float).reshape(len(rows), 4)
    return a[:, 0] / a[:, 2], a[:, 1] / a[:, 2], a[:, 3] / a[:, 2]  # fractions of the maximum, step too


def _grid_stats(h: np.ndarray, g: np.ndarray, step: np.ndarray, axis: int = -1) -> dict[str, Any]:
    d = np.abs(h - g)
    return {"exact": np.mean(d < 1e-6, axis=axis), "within_one_step": np.mean(d <= step + 1e-6, axis=axis),
            "qwk": quadratic_weighted_kappa(h, g, axis), "mae": np.mean(d, axis=axis)}


def grid_agreement(rows: Sequence[GridPair]) -> GridAgreement:
    """Agreement over ``(human, machine, max, step)`` items on their grids (see :class:`GridAgreement`).

    Raises:
        ValueError: ``rows`` is empty.
    """
    st = _grid_stats(*_grid_arrays(rows))
    return GridAgreement(n=len(rows), **{k: float(v) for k, v in st.items()})


def grid_agreement_with_ci(rows: Sequence[GridPair], *, n_boot: int = 1000, seed: int = 0
                           ) -> dict[str, dict[str, float]]:
    """``{metric: {"value", "lo", "hi"}}`` for exact, within_one_step, qwk (pooled) and mae on the
    grid (percentile bootstrap over items, vectorized), plus ``n``.

    Raises:
        ValueError: ``rows`` is empty.
    """
    out: dict[str, dict[str, float]] = {"n": {"value": len(rows), "lo": len(rows), "hi": len(rows)}}
    out.update(_with_ci(_grid_arrays(rows), _grid_stats, ("exact", "within_one_step", "qwk", "mae"), n_boot=n_boot,
                        seed=seed))
    return out


#: Fewest graded items for a question's QWK to count in :func:`per_question_qwk`.
MIN_ITEMS_PER_QUESTION = 2


def per_question_qwk(rows: Mapping[str, Sequence[GridPair]], *, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict[str, Any]:
    """The mean over questions of each question's QWK on its grid, with a percentile bootstrap
    interval over questions (questions resampled with replacement, each keeping its items: the
    spread a different set of questions would give).

    Args:
        rows: ``{question id: [(human, machine, max, step), ...]}``; questions with fewer than
            :data:`MIN_ITEMS_PER_QUESTION` items are left out (named in ``"left_out"``).

    Returns:
        ``{"value", "lo", "hi", "questions", "left_out", "per_question": {qid: qwk}}``; ``value``
        and the interval are None when no question has enough items.
    """
    qwks = {q: grid_agreement(r).qwk for q, r in rows.items() if len(r) >= MIN_ITEMS_PER_QUESTION}
    left_out = sorted(q for q, r in rows.items() if len(r) < MIN_ITEMS_PER_QUESTION)
    out: dict[str, Any] = {"questions": len(qwks), "left_out": left_out, "per_question": qwks}
    if not qwks:
        return {"value": None, "lo": None, "hi": None, **out}
    return {**mean_with_ci(list(qwks.values()), n_boot=n_boot, seed=seed, level=level), **out}
