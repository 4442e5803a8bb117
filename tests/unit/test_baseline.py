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
    g = ReferenceSimilarityGrader(bow_embedder)
    answers = [REF, "TCP has sequence numbers and acknowledgement numbers.", "I like bananas."]
    graded = g.grade_answers(question(), answers)
    scores = [s for s, _, _ in graded]
    assert scores[0] == 1.0 and scores[2] == 0.0 and scores[0] >= scores[1] >= scores[2]
    assert "Covers: tcp, headers" in graded[0][2] and "Missing:" in graded[1][2]
    assert all(0.5 <= c <= 0.95 for _, c, _ in graded)


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
