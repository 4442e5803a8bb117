"""Agreement figures, bootstrap intervals and the coverage curve on a small fixture."""

import pytest

from raygrade.evaluation import agreement, agreement_with_ci, bootstrap_ci, coverage_curve, score_level

# (human, machine, max): levels human 2,2,1,0,0,2 vs machine 2,1,1,0,2,2
PAIRS = [(1, 1, 1), (1, 0.5, 1), (0.5, 0.75, 1), (0, 0, 1), (0, 1, 1), (2, 2, 2)]


def test_levels():
    assert [score_level(s, 1) for s in (0, 0.001, 0.5, 0.999, 1)] == [0, 1, 1, 1, 2]


def test_agreement_figures():
    ag = agreement(PAIRS)
    assert ag.n == 6 and ag.exact == pytest.approx(4 / 6)
    assert ag.mae == pytest.approx((0 + 0.5 + 0.25 + 0 + 1 + 0) / 6)
    from sklearn.metrics import cohen_kappa_score

    h, g = [2, 2, 1, 0, 0, 2], [2, 1, 1, 0, 2, 2]
    assert ag.kappa == pytest.approx(cohen_kappa_score(h, g))
    assert ag.qwk == pytest.approx(cohen_kappa_score(h, g, weights="quadratic"))
    perfect = agreement([(1, 1, 1), (0, 0, 1), (0.5, 0.5, 1)])
    assert perfect.exact == perfect.qwk == perfect.kappa == 1.0
    assert agreement([(1, 1, 1), (0, 1, 1)]).qwk == 0.0  # machine constant: chance level, not NaN
    with pytest.raises(ValueError):
        agreement([])


def test_bootstrap_interval_brackets_the_estimate_and_is_reproducible():
    pairs = PAIRS * 10
    lo, hi = bootstrap_ci(pairs, lambda ps: agreement(ps).exact, n_boot=300, seed=1)
    assert lo <= agreement(pairs).exact <= hi and hi - lo < 0.4
    assert (lo, hi) == bootstrap_ci(pairs, lambda ps: agreement(ps).exact, n_boot=300, seed=1)
    ci = agreement_with_ci(pairs, n_boot=200)
    assert set(ci) == {"n", "exact", "kappa", "qwk", "mae"}
    assert ci["qwk"]["lo"] <= ci["qwk"]["value"] <= ci["qwk"]["hi"]


def test_coverage_curve_keeps_the_most_confident():
    conf = [0.9, 0.1, 0.8, 0.95, 0.2, 0.7]   # the two disagreements are the least confident
    curve = coverage_curve(PAIRS, conf, coverages=(0.5, 4 / 6, 1.0))
    assert [c["n"] for c in curve] == [3, 4, 6]
    assert curve[0]["exact"] == 1.0 and curve[1]["exact"] == 1.0 and curve[2]["exact"] == pytest.approx(4 / 6)


def test_grid_agreement_on_the_rubrics_own_scale():
    from raygrade.evaluation import grid_agreement, grid_agreement_with_ci

    rows = [(0.5, 0.5, 1, 0.125), (0.625, 0.5, 1, 0.125), (1.0, 0.75, 1, 0.125), (0.0, 0.0, 1, 0.125),
            (2.5, 2.0, 2.5, 0.5)]
    ag = grid_agreement(rows)
    assert ag.n == 5 and ag.exact == pytest.approx(2 / 5) and ag.within_one_step == pytest.approx(4 / 5)
    assert ag.mae == pytest.approx((0 + 0.125 + 0.25 + 0 + 0.2) / 5)
    assert 0 < ag.qwk < 1
    assert grid_agreement([(1, 1, 2, 0.5), (2, 2, 2, 0.5)]).qwk == 1.0
    ci = grid_agreement_with_ci(rows, n_boot=50)
    assert ci["exact"]["lo"] <= ci["exact"]["value"] <= ci["exact"]["hi"]
    with pytest.raises(ValueError):
        grid_agreement([])
