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
