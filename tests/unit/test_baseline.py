"""The reference-similarity grader with a small deterministic embedder (no model, no Ray)."""

import asyncio
import hashlib

import numpy as np
import pytest

from raygrade.baseline.similarity import (
    DEFAULT_THRESHOLDS,
    ReferenceSimilarityGrader,
    content_words,
    fit_thresholds,
    level_for,
    level_scores,
    word_f1,
)
from raygrade.batch import GradeBatch
from raygrade.prompts import StudentWork
from raygrade.protocol import ImagePage, Question, TextPage


def png_b64() -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def bow_embedder(texts):
    """Hashed bag of content words, L2-normalised: cosine = word-overlap similarity."""
    out = np.zeros((len(texts), 256))
    for i, t in enumerate(texts):
        for w in content_words(t):
            out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % 256] += 1
        n = np.linalg.norm(out[i])
        if n:
            out[i] /= n
    return out


REF = "TCP headers carry sequence numbers, acknowledgement numbers and a receive window; UDP headers do not."


def question(examples=()):
    return Question(id="q", prompt="Compare TCP and UDP headers.", reference_answer=REF, max_score=1,
                    score_step=0.25, examples=list(examples))


def test_word_f1():
    assert word_f1(REF, REF) == pytest.approx(1.0)
    assert word_f1("bananas are yellow", REF) == 0.0
    assert 0 < word_f1("TCP has sequence numbers", REF) < 1
    assert "the" not in content_words("The window")


def test_fit_thresholds_separates_levels():
    sims = [0.1, 0.15, 0.2, 0.45, 0.5, 0.55, 0.8, 0.9, 0.95]
    levels = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    t1, t2 = fit_thresholds(sims, levels)
    assert 0.2 < t1 < 0.45 and 0.55 < t2 < 0.8
    pred = [level_for(s, t1, t2) for s in sims]
    assert pred == levels


def test_level_scores_snap_to_grid_and_follow_examples():
    q = question([{"answer": "a", "score": 0.75}, {"answer": "b", "score": 0.75}, {"answer": "c", "score": 0.25}])
    assert level_scores(q) == (0.0, 0.75, 1.0)
    assert level_scores(question()) == (0.0, 0.5, 1.0)


def test_grades_order_by_similarity_and_explain():
    g = ReferenceSimilarityGrader(bow_embedder, scale="levels")
    answers = [REF, "TCP has sequence numbers and acknowledgement numbers.", "I like bananas."]
    graded = g.grade_answers(question(), answers)
    scores = [s for s, _, _, _ in graded]
    assert scores[0] == 1.0 and scores[2] == 0.0 and scores[0] >= scores[1] >= scores[2]
    assert "Covers: tcp, headers" in graded[0][2] and "Missing:" in graded[1][2]
    assert all(0.5 <= c <= 0.95 for _, c, _, _ in graded)


def test_thresholds_fitted_only_with_enough_varied_examples():
    g = ReferenceSimilarityGrader(bow_embedder)
    assert g.thresholds(question()) == DEFAULT_THRESHOLDS
    exs = [{"answer": REF, "score": 1}, {"answer": "sequence numbers", "score": 0.5},
           {"answer": "bananas", "score": 0}, {"answer": "UDP headers lack acknowledgement numbers", "score": 0.5}]
    assert g.thresholds(question(exs)) != DEFAULT_THRESHOLDS


def test_batch_grading_reports_image_pages_and_missing_reference_per_item():
    g = ReferenceSimilarityGrader(bow_embedder)
    no_ref = Question(id="r", prompt="Anything?", max_score=2)
    students = [
        StudentWork(student_id="a", alias="s1", pages=[TextPage(text=REF)], page_indices=[0], question_ids=["q", "r"]),
        StudentWork(student_id="b", alias="s2", pages=[ImagePage(data=png_b64())], page_indices=[0],
                    question_ids=["q"]),
    ]
    batch = GradeBatch(batch_id="b1", job_id="j", questions=[question(), no_ref], students=students,
                       prompt_tokens_estimate=0, max_tokens=1)
    out = asyncio.run(g.grade(batch))
    assert [(r.student_id, r.question_id, r.score) for r in out.results] == [("a", "q", 1.0)]
    assert {(e.student_ids[0], e.question_ids[0]) for e in out.errors} == {("b", "q"), ("a", "r")}
    assert out.calls == 0 and out.usage.total_tokens == 0


def test_margin_calibration_is_monotone_and_calibrated_in_the_large():
    import random

    from raygrade.baseline.similarity import calibrate_margins

    rng = random.Random(3)
    sims, levels = [], []
    for _ in range(120):  # true cuts at 0.4 / 0.7, with label noise near the cuts
        s = rng.random()
        lvl = 0 if s < 0.4 else (1 if s < 0.7 else 2)
        if min(abs(s - 0.4), abs(s - 0.7)) < 0.08 and rng.random() < 0.5:
            lvl = min(2, lvl + 1) if rng.random() < 0.5 else max(0, lvl - 1)
        sims.append(s)
        levels.append(lvl)
    cal = calibrate_margins(sims, levels)
    assert cal is not None
    grid = [cal(m) for m in (0.0, 0.02, 0.05, 0.1, 0.2, 0.3)]
    assert grid == sorted(grid) and 0 <= grid[0] < grid[-1] <= 1
    assert grid[0] < 0.8 and grid[-1] > 0.9   # near a cut: unsure; far from both: sure
    assert calibrate_margins(sims[:5], levels[:5]) is None


def test_expected_calibration_error():
    from raygrade.evaluation import expected_calibration_error

    assert expected_calibration_error([0.9] * 10, [True] * 9 + [False]) == pytest.approx(0.0)
    assert expected_calibration_error([1.0, 1.0], [False, False]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        expected_calibration_error([], [])


# -- the grid scale ------------------------------------------------------------------------
def _exs(pairs):
    return [{"answer": a, "score": sc} for a, sc in pairs]


PARTS = ["TCP headers carry sequence numbers", "acknowledgement numbers", "a receive window",
         "UDP headers do not"]


def _answers(k):
    """Answers covering the first ``k`` parts of the reference (more parts: more similar)."""
    return [" ".join(PARTS[:j]) or "bananas" for j in range(k)]


def test_grid_scale_reaches_every_grid_value_on_a_0_to_10_half_point_scale():
    from raygrade.baseline.grid import QuantileMap, score_grid, snap

    q = Question(id="q", prompt="p", reference_answer=REF, max_score=10, score_step=0.5,
                 examples=_exs([("bananas", 0), ("TCP headers carry sequence numbers", 4),
                                ("TCP headers carry sequence numbers and acknowledgement numbers", 7), (REF, 10)]))
    grid = score_grid(q)
    assert len(grid) == 21 and grid[1] == 0.5
    qmap = QuantileMap.fit([0.0, 0.3, 0.6, 1.0], [0.0, 0.4, 0.7, 1.0])
    reached = {snap(qmap.fraction(s / 1000) * 10, grid) for s in range(1001)}
    assert reached == set(grid)  # monotone, and every half point between 0 and 10
    graded = ReferenceSimilarityGrader(bow_embedder).grade_answers(q, [REF, "bananas", PARTS[0]])
    assert graded[0][0] == 10 and graded[1][0] == 0 and 0 < graded[2][0] < 10
    assert all(s in grid for s, _, _, _ in graded)


def test_one_level_examples_still_give_a_scale():
    """Examples all at full marks: answers far from the reference still score low (the old
    baseline fell back to default thresholds and half marks)."""
    q = Question(id="q", prompt="p", reference_answer=REF, max_score=2, score_step=0.25,
                 examples=_exs([(REF, 2), (REF + " indeed", 2), ("TCP and UDP headers differ: sequence numbers, "
                                                                 "acknowledgement numbers, receive window", 2)]))
    scores = [s for s, _, _, _ in ReferenceSimilarityGrader(bow_embedder).grade_answers(q, [REF, "I like bananas."])]
    assert scores[0] == 2 and scores[1] < 1


def test_a_question_with_a_single_example_or_none():
    g = ReferenceSimilarityGrader(bow_embedder)
    for exs in ([], _exs([(PARTS[0], 0.5)])):
        q = Question(id="q", prompt="p", reference_answer=REF, max_score=1, score_step=0.125, examples=exs)
        graded = g.grade_answers(q, [REF, PARTS[0], "bananas"])
        scores = [s for s, _, _, _ in graded]
        assert scores == sorted(scores, reverse=True) and scores[0] > scores[2]
        assert all(0.01 <= c <= 0.99 for _, c, _, _ in graded)


def test_grid_confidence_is_calibrated_probability_of_the_exact_score():
    """The shipped pooled map: in [0.01, 0.99], higher for full-marks/no-credit grades deep in
    their cell than near a boundary, and scaled by the question's own leave-one-out hit rate."""
    from raygrade.baseline.grid import grid_confidence, pooled_calibration, question_factor

    margins, p, p_end, rate = pooled_calibration()
    assert list(p) == sorted(p) and 0 < rate < 1 and 0 <= p_end <= 1
    assert grid_confidence(0.0, False) <= grid_confidence(0.5, False)
    assert question_factor([]) == pytest.approx(1.0)
    assert question_factor([True] * 20) > 1 > question_factor([False] * 20)
    assert grid_confidence(0.5, True, question_factor([True] * 50)) > grid_confidence(0.5, True)
    assert 0.01 <= grid_confidence(0.0, False, 0.0) and grid_confidence(0.5, True, 10.0) <= 0.99


def test_a_map_that_cannot_separate_its_examples_gives_their_median_at_the_lowest_confidence(caplog):
    """Issue 30: 30 examples all at similarity 0 (a placeholder reference) gave every answer full
    marks (the interpolation took the top of the tie)."""
    from raygrade.baseline.grid import DEGENERATE_CONFIDENCE, QuantileMap

    fracs = [0.0] * 10 + [0.5] * 12 + [1.0] * 8
    qmap = QuantileMap.fit([0.0] * 30, fracs)
    assert qmap.degenerate and qmap.fraction(0.0) == qmap.fraction(0.9) == 0.5
    assert not QuantileMap.fit([0.0] * 30, [1.0] * 30).degenerate, "one score: nothing to separate"
    assert not QuantileMap.fit([0.2], [0.5]).degenerate and not QuantileMap.fit([0.1, 0.4], [0, 1]).degenerate

    q = Question(id="q7", prompt="p", reference_answer="zz", max_score=2, score_step=0.5,
                 examples=_exs([(f"answer number {i}", 2 * f) for i, f in enumerate(fracs)]))
    with caplog.at_level("WARNING", logger="raygrade.baseline.similarity"):
        graded = ReferenceSimilarityGrader(bow_embedder).grade_answers(q, ["TCP headers", "answer number 3"])
    assert [(s, c) for s, c, _, _ in graded] == [(1.0, DEGENERATE_CONFIDENCE)] * 2, "the median, not full marks"
    assert [e for *_, e in graded] == [1.0, 1.0], "the widest error on the grid: routed first by expected error too"
    assert "question q7" in caplog.text and "answer number" not in caplog.text, "no student text in logs"

    # A batch's outcome names the question (the job's status carries it: JobStatus.warnings).
    students = [StudentWork(student_id="a", alias="s1", pages=[TextPage(text=REF)], page_indices=[0],
                            question_ids=["q", "q7"])]
    out = ReferenceSimilarityGrader(bow_embedder).grade_sync(GradeBatch(
        batch_id="b1", job_id="j", questions=[question(), q], students=students, prompt_tokens_estimate=0,
        max_tokens=1))
    assert [(w.type, w.question_ids) for w in out.warnings] == [("degenerate_reference", ["q7"])]
    assert "q7" in out.warnings[0].message and REF not in out.warnings[0].message


def test_a_grades_distribution_over_the_grid_comes_from_outcomes_near_it():
    from raygrade.baseline.grid import SHRINK_EXAMPLES, expected_error, grade_distribution, loo_fractions

    grid = [0.0, 0.5, 1.0, 1.5, 2.0]
    pooled = grade_distribution(0.5, grid, 2.0)        # SAF's outcomes only
    assert pooled.shape == (5,) and pooled.sum() == pytest.approx(1.0) and pooled.argmax() in (1, 2, 3)
    # A question whose examples graded near 0.5 (raw) were all given 1.5 points: its own outcomes
    # pull the distribution there, shrunk towards the pooled one by their kernel weight.
    own = [(0.5, 0.75)] * 20
    mine = grade_distribution(0.5, grid, 2.0, own)
    assert mine[3] == pytest.approx(20 / (20 + SHRINK_EXAMPLES) + 5 / 25 * pooled[3])
    assert expected_error(mine, grid, 1.5) < expected_error(pooled, grid, 1.5)
    far = grade_distribution(0.05, grid, 2.0, own)      # the examples lie far from this grade: the pooled view
    assert far == pytest.approx(grade_distribution(0.05, grid, 2.0), abs=1e-3)
    assert expected_error(np.array([0, 0, 0.5, 0, 0.5]), grid, 1.0) == 0.5

    loo = loo_fractions([0.1, 0.5, 0.9], [0.0, 0.5, 1.0])    # each example by the map of the other two
    assert [y for _, y in loo] == [0.0, 0.5, 1.0] and loo[0][0] < loo[1][0] < loo[2][0]


def test_grades_carry_their_expected_error_and_the_batch_passes_it_on():
    q = Question(id="q", prompt="p", reference_answer=REF, max_score=10, score_step=0.5,
                 examples=_exs([(REF, 10), (PARTS[0], 5), ("bananas", 0)] * 3))
    graded = ReferenceSimilarityGrader(bow_embedder).grade_answers(q, [REF, PARTS[0], "I like bananas."])
    assert all(0 <= g.expected_error <= 10 for g in graded)
    levels = ReferenceSimilarityGrader(bow_embedder, scale="levels").grade_answers(question(), [REF])
    assert levels[0].expected_error == pytest.approx((1 - levels[0].confidence) * 0.25)   # a miss: one step
    students = [StudentWork(student_id="a", alias="s1", pages=[TextPage(text=PARTS[0])], page_indices=[0],
                            question_ids=["q"])]
    out = ReferenceSimilarityGrader(bow_embedder).grade_sync(GradeBatch(
        batch_id="b1", job_id="j", questions=[q], students=students, prompt_tokens_estimate=0, max_tokens=1))
    assert out.results[0].expected_error == graded[1].expected_error
