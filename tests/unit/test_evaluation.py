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


def test_qwk_weights_the_scores_values_so_the_whole_grid_counts():
    """The closed form equals sklearn's quadratic κ given every label of the grid, whether or not
    a label is used; sklearn given only the labels used (the old way) gives another number."""
    import random

    from sklearn.metrics import cohen_kappa_score

    from raygrade.evaluation import grid_agreement, quadratic_weighted_kappa

    rng = random.Random(3)
    h = [rng.choice([0, 1, 2, 5, 6, 8]) for _ in range(40)]  # a 0–8 grid; 3, 4 and 7 never given
    g = [min(8, max(0, x + rng.choice([-2, -1, 0, 0, 1]))) for x in h]
    full = cohen_kappa_score(h, g, weights="quadratic", labels=list(range(9)))
    assert quadratic_weighted_kappa(h, g) == pytest.approx(full)
    used = sorted(set(h) | set(g))
    only_used = cohen_kappa_score([used.index(x) for x in h], [used.index(x) for x in g], weights="quadratic")
    assert abs(only_used - full) > 0.01
    assert grid_agreement([(a, b, 8, 1) for a, b in zip(h, g)]).qwk == pytest.approx(full)
    assert quadratic_weighted_kappa([1, 1], [1, 1]) == 1.0 and quadratic_weighted_kappa([1, 1], [0, 0]) == 0.0


def test_per_question_qwk_is_the_headline_and_pooled_flatters():
    """Two questions of different difficulty: each graded poorly within itself, but pooled, the
    gap between the questions looks like agreement."""
    import random

    from raygrade.evaluation import grid_agreement, per_question_qwk

    rng = random.Random(0)
    rows = {}
    for q, centre in (("easy", 3.0), ("hard", 1.0), ("mid", 2.0)):
        hs = [min(4.0, max(0.0, centre + rng.choice([-1, 0, 1]))) for _ in range(30)]
        rows[q] = [(h, min(4.0, max(0.0, centre + rng.choice([-1, 0, 1]))), 4.0, 1.0) for h in hs]
    rows["tiny"] = [(1.0, 1.0, 4.0, 1.0)]
    pq = per_question_qwk(rows, n_boot=300, seed=1)
    pooled = grid_agreement([r for rs in rows.values() for r in rs]).qwk
    assert pq["questions"] == 3 and pq["left_out"] == ["tiny"]
    assert pq["value"] == pytest.approx(sum(pq["per_question"].values()) / 3)
    assert pooled > pq["value"] + 0.3, (pooled, pq)
    assert pq["lo"] <= pq["value"] <= pq["hi"]
    assert per_question_qwk({"tiny": rows["tiny"]})["value"] is None


def test_vectorized_intervals_match_the_generic_bootstrap():
    """The reports' vectorized intervals are the same resamples as :func:`bootstrap_ci`'s."""
    from raygrade.evaluation import grid_agreement, grid_agreement_with_ci

    rows = [(h, m, 3, 0.5) for h, m in zip([0, 0.5, 1, 3, 2.5, 2, 1.5, 3, 0, 1] * 3,
                                          [0, 1, 1, 2.5, 2.5, 2, 0.5, 3, 0.5, 1.5] * 3)]
    ci = grid_agreement_with_ci(rows, n_boot=200, seed=4)
    for name in ("exact", "qwk", "mae"):
        lo, hi = bootstrap_ci(rows, lambda rs, name=name: getattr(grid_agreement(rs), name), n_boot=200, seed=4)
        assert (ci[name]["lo"], ci[name]["hi"]) == pytest.approx((lo, hi)), name
    levels = agreement_with_ci([(h, m, mx) for h, m, mx, _ in rows], n_boot=200, seed=4)
    lo, hi = bootstrap_ci([(h, m, mx) for h, m, mx, _ in rows], lambda ps: agreement(ps).kappa, n_boot=200, seed=4)
    assert (levels["kappa"]["lo"], levels["kappa"]["hi"]) == pytest.approx((lo, hi))
