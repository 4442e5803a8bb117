"""Confidence calibration maps: fitting, strata, files, and BatchGrader applying them."""

import asyncio
import random

import pytest

from raygrade.calibration import CalibrationCurve, ConfidenceCalibration, fit_calibration
from raygrade.errors import ConfigError
from raygrade.evaluation import expected_calibration_error


def overconfident_sample(n=400, seed=0):
    """Raw confidences in [0.8, 1] whose true accuracy is 0.2 + 0.5·(raw − 0.8)/0.2, i.e. 0.2–0.7."""
    rng = random.Random(seed)
    raw, right = [], []
    for _ in range(n):
        c = rng.uniform(0.8, 1.0)
        raw.append(c)
        right.append(rng.random() < 0.2 + 0.5 * (c - 0.8) / 0.2)
    return raw, right


def test_isotonic_map_fixes_overconfidence_and_keeps_the_order():
    raw, right = overconfident_sample()
    cal = fit_calibration(raw, right, provider="p/m", source="score_logprob")
    fitted = [cal.calibrate(c) for c in raw]
    # Isotonic regression keeps the mean: mean calibrated confidence = accuracy on the fitting set.
    assert sum(fitted) / len(fitted) == pytest.approx(sum(right) / len(right), abs=0.01)
    # It is monotone, so the review order is unchanged.
    assert all(cal.calibrate(a) <= cal.calibrate(b) for a, b in zip(sorted(raw), sorted(raw)[1:]))
    # On fresh data from the same model it is calibrated, and the raw numbers are not.
    raw2, right2 = overconfident_sample(seed=1)
    assert expected_calibration_error(raw2, right2) > 0.3
    assert expected_calibration_error([cal.calibrate(c) for c in raw2], right2) < 0.1
    assert cal.calibrate(0.0) == pytest.approx(cal.curves["all"].y[0], abs=1e-4)
    assert cal.calibrate(1.0) == pytest.approx(cal.curves["all"].y[-1], abs=1e-4)


def test_baseline_agreement_strata_split_the_map():
    rng = random.Random(2)
    raw, right, agrees = [], [], []
    for _ in range(300):
        a = rng.random() < 0.5
        raw.append(rng.uniform(0.85, 0.95))
        agrees.append(a)
        right.append(rng.random() < (0.8 if a else 0.2))
    cal = fit_calibration(raw, right, agrees=agrees, provider="p/m", source="self_reported")
    assert set(cal.curves) == {"all", "agree", "disagree"}
    assert cal.calibrate(0.9, True) > 0.6 > 0.4 > cal.calibrate(0.9, False)
    assert 0.3 < cal.calibrate(0.9) < 0.7  # unknown agreement: the pooled curve
    # A stratum with too few examples falls back to the pooled curve.
    few = fit_calibration(raw[:30], right[:30], agrees=[True] * 25 + [False] * 5, provider="p/m",
                          source="self_reported")
    assert set(few.curves) == {"all", "agree"} and few.calibrate(0.9, False) == few.calibrate(0.9)


def test_calibration_file_round_trip_and_errors(tmp_path):
    cal = fit_calibration([0.1, 0.5, 0.9, 0.95], [False, False, True, True], provider="p/m", source="score_logprob")
    path = tmp_path / "cal.json"
    cal.save(path)
    assert ConfidenceCalibration.load(path) == cal
    with pytest.raises(ConfigError, match="cannot read"):
        ConfidenceCalibration.load(tmp_path / "missing.json")
    path.write_text('{"provider": "p/m", "source": "score_logprob", "n": 1, "curves": {}}')
    with pytest.raises(ConfigError, match="invalid calibration file"):
        ConfidenceCalibration.load(path)
    with pytest.raises(ValueError, match="non-decreasing"):
        CalibrationCurve(x=[0.1, 0.5], y=[0.6, 0.2])
    with pytest.raises(ValueError):
        fit_calibration([], [], provider="p/m", source="score_logprob")


def test_batch_grader_applies_calibration_and_baseline_agreement(tmp_path):
    from raygrade.batch import BatchOutcome
    from raygrade.protocol import GradeResult, Usage
    from tests.unit.test_grading import ScriptedProvider, batch, good, grader

    class Baseline:  # agrees on student-1 (same level), disagrees on student-2
        async def grade(self, b):
            return BatchOutcome(batch_id=b.batch_id, errors=[], usage=Usage(), calls=0, results=[GradeResult(
                student_id=s.student_id, question_id=q, score=0.5 if s.student_id == "student-1" else 0,
                max_score=1 if q == "q1" else 2, feedback="", confidence=0.5, pages=[0], model="baseline",
                batch_id=b.batch_id, usage=Usage()) for s in b.students for q in s.question_ids])

    cal = ConfidenceCalibration(provider="p/m", source="self_reported", n=100, curves={
        "all": CalibrationCurve(x=[0.0, 1.0], y=[0.0, 0.5]),
        "agree": CalibrationCurve(x=[0.0, 1.0], y=[0.0, 0.8]),
        "disagree": CalibrationCurve(x=[0.0, 1.0], y=[0.0, 0.1])})
    b = batch(2)
    g, _ = grader(ScriptedProvider([good(b.students, score=0.5)]), calibration=cal, agreement=Baseline())
    out = asyncio.run(g.grade(b))
    by = {(r.student_id, r.question_id): r for r in out.results}
    r1, r2 = by[("student-1", "q1")], by[("student-2", "q1")]
    assert r1.baseline_agrees is True and r1.confidence == pytest.approx(0.72) and r1.confidence_calibrated
    assert r2.baseline_agrees is False and r2.confidence == pytest.approx(0.09)
    # the expected error follows the calibrated confidence: (1 − P(exact)) × the question's step
    assert r1.expected_error == pytest.approx(0.28 * 0.5) and r2.expected_error == pytest.approx(0.91 * 0.5)
    assert by[("student-1", "q2")].expected_error == pytest.approx((1 - by[("student-1", "q2")].confidence) * 0.5)
    # Calibration alone: the pooled curve; a map for another source leaves grades as they are.
    g, _ = grader(ScriptedProvider([good(b.students, score=0.5)]), calibration=cal)
    out = asyncio.run(g.grade(b))
    assert {(r.confidence, r.baseline_agrees) for r in out.results} == {(0.45, None)}
    other = cal.model_copy(update={"source": "score_logprob"})
    g, _ = grader(ScriptedProvider([good(b.students, score=0.5)]), calibration=other)
    out = asyncio.run(g.grade(b))
    assert {(r.confidence, r.confidence_calibrated) for r in out.results} == {(0.9, False)}


def test_calibration_and_agreement_are_wired_from_the_provider_config(tmp_path):
    from raygrade.baseline.similarity import ReferenceSimilarityGrader
    from raygrade.graders import build_batch_grader
    from raygrade.ratelimit.limiter import RateLimiter
    from raygrade.testing.fake_openai import fake_provider_config

    path = tmp_path / "cal.json"
    fit_calibration([0.2, 0.9], [False, True], provider="fake/m", source="self_reported").save(path)
    g = build_batch_grader(fake_provider_config("http://127.0.0.1:9/v1", calibration_path=str(path),
                                                baseline_agreement=True), RateLimiter())
    assert g._calibration.n == 2 and isinstance(g._agreement, ReferenceSimilarityGrader) and g._fallback is None
    with pytest.raises(ConfigError):
        build_batch_grader(fake_provider_config("http://127.0.0.1:9/v1", calibration_path=str(tmp_path / "x")), None)
