"""benchmarks/review_loop.py's simulated teacher on a small synthetic dataset (no SAF, no model
download: a deterministic bag-of-words embedder): the invariants every run must keep."""

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from raygrade.datasets.saf import SAFAnswer, SAFQuestion

pytest.importorskip("sklearn", reason="the baseline extra")
ROOT = Path(__file__).resolve().parents[2]
WORDS = ["router", "packet", "network", "address", "forward", "switch", "cable", "light", "wifi", "table"]


def embed(texts):
    rows = []
    for t in texts:
        v = np.array([t.count(w) for w in WORDS], dtype=float) + 0.05
        v[int(hashlib.sha256(t.encode()).hexdigest(), 16) % len(WORDS)] += 0.3
        rows.append(v / np.linalg.norm(v))
    return np.vstack(rows)


def question(key: str, n: int, seed: int) -> SAFQuestion:
    rng = np.random.default_rng(seed)
    answers = []
    for i in range(n):
        k = int(rng.integers(0, 5))          # how much of the reference the answer covers
        text = " ".join(WORDS[:k] + [WORDS[5 + int(rng.integers(0, 5))]] * int(rng.integers(0, 3)))
        answers.append(SAFAnswer(id=f"{key}-{i}", response=text or "no idea", feedback="", score=min(k, 4) / 2,
                                 label=""))
    return SAFQuestion(key, f"question {key}", "router packet network address forward", 2.0, tuple(answers))


@pytest.fixture(scope="module")
def sim():
    spec = importlib.util.spec_from_file_location("review_loop", ROOT / "benchmarks" / "review_loop.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    test = [question(k, 24, s) for s, k in enumerate(("q1", "q2", "q3"))]
    train = {q.key: question(q.key, 12, 100 + i) for i, q in enumerate(test)}
    return mod, mod.Simulation(test, train, embed, examples=6, seed=0)


def test_no_review_changes_nothing_and_full_review_is_exact(sim):
    mod, s = sim
    start = {name: s.run(name, 0.0, 2, 0) for name in mod.STRATEGIES}
    assert len({(r["qwk_pooled"], r["exact"]) for r in start.values()}) == 1
    assert all(r["reviewed"] == 0 for r in start.values())
    for name in mod.STRATEGIES:
        full = s.run(name, 1.0, 2, 0)
        assert full["exact"] == 1.0 and full["qwk_pooled"] == pytest.approx(1.0) and full["reviewed"] == 72


def test_counts_and_the_confidence_choice(sim):
    mod, s = sim
    for name in mod.STRATEGIES:
        r = s.run(name, 0.25, 2, 0)
        assert r["reviewed"] == r["teacher_actions"] == 18
    # Without regrading, reviewing the 18 least confident items fixes exactly those items.
    lowest = sorted(s.initial, key=lambda k: (s.initial[k][1], k))[:18]
    expected = {k: (s.human[k] if k in lowest else s.initial[k][0]) for k in s.human}
    assert s.run("confidence", 0.25, 2, 0) == s.agreement(expected) | {"reviewed": 18, "teacher_actions": 18}


def test_groups_cover_the_share_with_fewer_actions_than_items(sim):
    mod, s = sim
    r = s.run_groups(0.5, threshold=0.3)
    assert r["reviewed"] >= 36 and 1 <= r["teacher_actions"] <= r["reviewed"]
    assert r["items_per_action"] == pytest.approx(r["reviewed"] / r["teacher_actions"])
    report = {"dataset": "synthetic", "answers": 72, "examples": 6, "rounds": 2,
              "runs": {"groups": {"0.5": r}, "confidence": {"0.5": s.run("confidence", 0.5, 2, 0)}}}
    assert "items/action" in mod.markdown(report)
    none = {**r, "qwk_per_question": {"value": None, "lo": None, "hi": None}}   # too few items per question
    assert "n/a" in mod.markdown({**report, "runs": {"groups": {"0.5": none}}})


def test_a_review_target_reaches_its_expectation_when_confidence_is_calibrated(sim):
    mod, s = sim
    r = s.run_target(0.9)
    assert r["expected"] >= 0.9 and 0 < r["share"] <= 1 and r["reviewed"] == round(r["share"] * 72)
    assert s.run_target(1.0)["exact"] == 1.0


def test_a_qwk_target_reviews_more_for_a_higher_target_and_reports_its_expectation(sim):
    mod, s = sim
    low, high = s.run_target_qwk(0.5), s.run_target_qwk(0.95)
    assert low["metric"] == "qwk" and low["expected"] >= 0.5 and high["expected"] >= 0.95
    assert 0 <= low["share"] <= high["share"] <= 1 and high["reviewed"] == round(high["share"] * 72)
    assert "review_target qwk >= 0.95" in mod.markdown({"dataset": "d", "answers": 72, "examples": 0, "rounds": 1,
                                                        "runs": {"random": {"0": low}}, "targets": [high]})


def test_an_audit_recalibrates_an_overconfident_grader_toward_its_target(sim):
    mod, s = sim
    r = s.run_target_audited(0.9, 0.3, 3.0)
    assert r["audited"] > 0 and r["slope"] < 1                       # the audits saw the overconfidence
    assert r["recalibrated"]["ece"] < r["raw"]["ece"]
    assert r["recalibrated"]["share"] >= r["raw"]["share"]            # more trust lost, more to review
    assert "recalibrated: ECE" in mod.markdown({"dataset": "d", "answers": 72, "examples": 0, "rounds": 1,
                                               "runs": {"random": {"0": s.run("random", 0, 1, 0)}},
                                               "targets": [], "audited": [r]})
