import pytest

from raygrade.review import review_cut


def test_review_cut_takes_the_least_confident_share():
    conf = [0.9, 0.2, 0.5, 0.2, 0.99]
    assert review_cut(conf, 0.0) == set()
    assert review_cut(conf, 0.4) == {1, 3}
    assert review_cut(conf, 0.5) == {1, 3, 2}       # ceil(2.5) = 3
    assert review_cut(conf, 1.0) == set(range(5))
    assert review_cut([0.7, 0.7, 0.7], 0.34) == {0, 1}  # ties: earlier first
    assert review_cut([], 0.5) == set()
    with pytest.raises(ValueError):
        review_cut(conf, 1.5)


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
