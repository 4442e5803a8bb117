import pytest

from raygrade.review import review_cut


def test_review_cut_takes_the_share_most_at_risk():
    risks = [0.1, 0.8, 0.5, 0.8, 0.01]
    assert review_cut(risks, 0.0) == set()
    assert review_cut(risks, 0.4) == {1, 3}
    assert review_cut(risks, 0.5) == {1, 3, 2}       # ceil(2.5) = 3
    assert review_cut(risks, 1.0) == set(range(5))
    assert review_cut([0.3, 0.3, 0.3], 0.34) == {0, 1}  # ties: earlier first
    assert review_cut([], 0.5) == set()
    with pytest.raises(ValueError):
        review_cut(risks, 1.5)


def test_target_cut_reviews_the_fewest_items_the_expected_agreement_needs():
    import pytest

    from raygrade.review import target_cut

    conf = [0.9, 0.2, 0.95, 0.5, 0.8]           # expected exact with none reviewed: 3.35 / 5 = 0.67
    assert target_cut(conf, 0.6) == (set(), pytest.approx(0.67))
    flagged, expected = target_cut(conf, 0.9)    # +0.8 (item 1) -> 0.83, +0.5 (item 3) -> 0.93
    assert flagged == {1, 3} and expected == pytest.approx(0.93)
    assert target_cut(conf, 1.0)[0] == {0, 1, 2, 3, 4}
    flagged, expected = target_cut([0.5, 0.5], 0.8, right=3)   # (3 + 1) / 5 = 0.8 already
    assert flagged == set() and expected == pytest.approx(0.8)
    assert target_cut([], 0.9) == (set(), 1.0)
    with pytest.raises(ValueError):
        target_cut(conf, 0)


def test_risk_is_the_expected_error_as_a_share_of_the_maximum_else_one_minus_confidence():
    from raygrade.protocol import GradeResult, Question, Usage
    from raygrade.review import error_share, miss_error, question_step, review_risk, risk

    def grade(conf, error, max_score=4.0):
        return GradeResult(student_id="s", question_id="q", score=1, max_score=max_score, feedback="", pages=[0],
                           confidence=conf, expected_error=error, model="m", batch_id="b", usage=Usage())

    assert review_risk(grade(0.9, 2.0)) == 0.5 and review_risk(grade(0.9, 2.0), "confidence") == pytest.approx(0.1)
    assert review_risk(grade(0.9, None)) == pytest.approx(0.1)        # graded before errors were estimated
    assert review_risk(grade(0.9, 9.0)) == 1.0                        # capped
    assert error_share(1.0, 0) is None and risk(0.3, None) == pytest.approx(0.7)
    q = Question(id="q", prompt="p", max_score=3, score_step=0.5)
    assert question_step(q) == 0.5 and question_step(Question(id="q", prompt="p", max_score=3)) == 1.5
    assert miss_error(0.75, 0.5) == 0.125 and miss_error(1.0, 0.5) == 0


def test_review_cut_by_risk_differs_from_confidence_where_a_miss_costs_more():
    # Two grades right with the same probability: a miss is one step of a 10-step grid (item 0)
    # or the whole of a two-level question (item 1). Confidence cannot tell them apart; risk can.
    confidences, errors, maxima = [0.8, 0.8, 0.6], [0.02, 0.2, 0.04], [1.0, 1.0, 1.0]
    from raygrade.review import risk

    by_error = [risk(c, e / m) for c, e, m in zip(confidences, errors, maxima)]
    by_conf = [risk(c, e / m, "confidence") for c, e, m in zip(confidences, errors, maxima)]
    assert review_cut(by_error, 0.33) == {1} and review_cut(by_conf, 0.33) == {2}


def test_routing_curve_reports_the_kept_items_and_the_job_after_review():
    from raygrade.review import routing_curve

    rows = [(1.0, 1.0, 1.0, 0.5), (0.0, 1.0, 1.0, 0.5), (0.5, 0.5, 1.0, 0.5), (1.0, 0.5, 1.0, 0.5)]
    curve = routing_curve(rows, [0.1, 0.9, 0.2, 0.5], shares=(0.0, 0.5, 1.0))
    assert [p["reviewed"] for p in curve] == [0, 2, 4]
    assert curve[0]["kept"]["exact"] == 0.5 and curve[0]["after_review"]["mae"] == pytest.approx(1.5 / 4)
    assert curve[1]["kept"]["exact"] == 1.0 and curve[1]["after_review"]["exact"] == 1.0  # the two misses routed
    assert curve[2]["kept"] is None and curve[2]["after_review"]["qwk"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        routing_curve(rows, [0.1])


def test_qwk_target_cut_matches_weighted_kappa_and_reviews_the_largest_expected_errors_first():
    sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="the baseline extra")
    from raygrade.review import TargetItem, expected_sq_error, qwk_target_cut

    # The chance term's model: the teacher's scores are the model's plus mean-zero errors uncorrelated
    # with them. For such a sample the expected QWK is the weighted kappa itself (Cohen 1968, squared
    # weights), computed here by scikit-learn on the grid's labels.
    model = [0.5, 0.5, 1.0, 1.0, 1.5, 1.5, 1.0, 1.0]
    err = [0.5, -0.5, 0.5, -0.5, 0.5, -0.5, 0.0, 0.0]
    human = [m + e for m, e in zip(model, err)]
    items = [TargetItem("q", m, e * e) for m, e in zip(model, err)]
    picked, expected = qwk_target_cut(items, 1e-9)
    kappa = sklearn_metrics.cohen_kappa_score([round(h / 0.5) for h in human], [round(m / 0.5) for m in model],
                                              weights="quadratic")
    assert picked == set() and expected == pytest.approx(kappa)

    # Reviews go to the largest expected squared errors first, as many as the target needs; each
    # reviewed item's error is gone from its question's kappa.
    picked, expected = qwk_target_cut(items, 0.9)
    assert picked <= {0, 1, 2, 3, 4, 5} and expected >= 0.9
    assert len(qwk_target_cut(items, 0.5)[0]) < len(picked)
    everything, full = qwk_target_cut(items, 1.0)
    assert everything == {0, 1, 2, 3, 4, 5} and full == pytest.approx(1.0)  # the zero-error items need no review

    # Questions weigh equally in the mean; reviewed items count right and are not picked again.
    two = [TargetItem("a", 1.0, 0.2), TargetItem("a", 1.0, 0.025), TargetItem("b", 1.0, 0.2, reviewed=True),
           TargetItem("b", 0.0, 0.0)]
    picked, expected = qwk_target_cut(two, 0.99)
    assert picked == {0, 1} and expected == pytest.approx(1.0)
    assert qwk_target_cut([TargetItem("c", 1.0, 0.0)] * 3, 0.5) == (set(), 1.0)  # no disagreement expected
    assert qwk_target_cut([], 0.5) == (set(), 1.0)
    with pytest.raises(ValueError):
        qwk_target_cut(items, 0.0)

    # A grade's expected squared error: one-step misses on a coarse grid, a normal error's second
    # moment on a fine one.
    assert expected_sq_error(None, 0.8, 0.5) == pytest.approx(0.2 * 0.5 * 0.5)
    assert expected_sq_error(0.3, 0.1, 1.0) == pytest.approx(0.3)
    assert expected_sq_error(0.5, 0.1, 0.125) == pytest.approx(3.141592653589793 / 2 * 0.25)
