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


def _item(k: int, reviewed: bool = False):
    from raygrade.protocol import ReviewItem, TeacherReview

    return ReviewItem(id=f"item_{k * 10000}", job_id="job_1", student_id=f"s{k}", question_id="q1",
                      status="done" if reviewed else "pending", score=1.0, graded_by="model", model_score=1.0,
                      max_score=2.0, feedback="", confidence=0.5 + k / 100, needs_review=False, pages=[0],
                      page_urls=[], review=TeacherReview(score=1.0, reviewed_at=1.0) if reviewed else None)


def test_the_grouper_makes_stable_ids_keeps_textless_items_apart_and_caches():
    from raygrade.answer_groups import AnswerGrouper

    calls = []

    def counting(texts):
        calls.append(len(texts))
        return embed(texts)

    grouper = AnswerGrouper(counting)
    items = [_item(k, reviewed=(k == 1)) for k in range(5)]
    texts = ["a router forwards", "the router routes", None, "a switch learns", None]
    groups = grouper.groups("job_1", "q1", items, texts, threshold=0.2)
    assert [(g.id, g.item_ids) for g in groups] == [
        ("group_0", ["item_0", "item_10000"]), ("group_20000", ["item_20000"]), ("group_30000", ["item_30000"]),
        ("group_40000", ["item_40000"])]
    assert groups[0].reviewed == 1 and groups[0].status == "pending" and groups[0].sample == "a router forwards"
    assert groups[1].sample == "" and groups[0].mean_confidence == pytest.approx(0.505)
    assert grouper.groups("job_1", "q1", items, texts, threshold=0.2) == groups and calls == [3]
