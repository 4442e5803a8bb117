"""Answer groups on a deterministic embedder: near-duplicates share a group, different answers do
not, blanks are a group of their own, every index appears once."""

import numpy as np
import pytest

from raygrade.answer_groups import answer_groups

pytest.importorskip("sklearn", reason="the baseline extra")

DIRECTIONS = {"router": [1, 0, 0], "switch": [0, 1, 0], "cable": [0, 0, 1]}


def embed(texts):
    rows = []
    for t in texts:
        v = np.zeros(3)
        for word, d in DIRECTIONS.items():
            v += t.count(word) * np.asarray(d, dtype=float)
        v += 0.01 * (len(t) % 7)   # a little noise: near-duplicates are close, not equal
        rows.append(v / np.linalg.norm(v))
    return np.vstack(rows)


def test_similar_answers_share_a_group():
    texts = ["a router forwards", "the router routes", "", "a switch learns", "switch tables", "router!", "  ",
             "a cable"]
    groups = answer_groups(texts, embed, threshold=0.2)
    assert sorted(i for g in groups for i in g) == list(range(len(texts)))
    as_sets = {frozenset(g) for g in groups}
    assert as_sets == {frozenset({0, 1, 5}), frozenset({2, 6}), frozenset({3, 4}), frozenset({7})}
    assert [g[0] for g in groups] == sorted(g[0] for g in groups)


def test_a_wide_threshold_merges_and_a_single_answer_is_one_group():
    texts = ["router", "switch", "cable"]
    assert answer_groups(texts, embed, threshold=1.5) == [[0, 1, 2]]
    assert answer_groups(["router"], embed) == [[0]]
    assert answer_groups([], embed) == []
    with pytest.raises(ValueError):
        answer_groups(texts, embed, threshold=0)
