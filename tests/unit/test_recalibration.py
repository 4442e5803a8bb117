"""Confidences recalibrated from audit reviews (raygrade.recalibration): the audit sample is a
stable uniform draw, and the fitted map recovers a grader's miscalibration from its audits."""

import math
import random

import pytest

from raygrade.evaluation import expected_calibration_error
from raygrade.recalibration import Recalibration, fit_recalibration, is_audit


def test_the_audit_sample_is_a_stable_uniform_draw_of_the_share():
    ids = [(f"s{i}", f"q{i % 3}") for i in range(20_000)]
    picked = [is_audit("job_1", s, q, 0.1) for s, q in ids]
    assert 0.09 < sum(picked) / len(ids) < 0.11
    assert picked == [is_audit("job_1", s, q, 0.1) for s, q in ids]          # the same items every time
    assert picked != [is_audit("job_2", s, q, 0.1) for s, q in ids]          # another job, another sample
    assert not any(is_audit("job_1", s, q, 0.0) for s, q in ids[:100])
    assert all(is_audit("job_1", s, q, 0.2) for (s, q), p in zip(ids, picked) if p)  # a larger share keeps them


def simulate(n: int, seed: int, overconfidence: float) -> list[tuple[float, bool]]:
    """A grader right with probability p that reports σ(overconfidence · logit(p))."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p = rng.uniform(0.35, 0.97)
        reported = 1 / (1 + math.exp(-overconfidence * math.log(p / (1 - p))))
        out.append((reported, rng.random() < p))
    return out


def test_the_fit_recovers_an_overconfident_grader_and_lowers_its_calibration_error():
    audits, rest = simulate(400, 0, 2.5), simulate(4_000, 1, 2.5)
    recal = fit_recalibration(audits)
    assert recal.audited == 400 and recal.slope == pytest.approx(1 / 2.5, abs=0.12)
    before = expected_calibration_error([c for c, _ in rest], [ok for _, ok in rest])
    after = expected_calibration_error([recal.apply(c) for c, _ in rest], [ok for _, ok in rest])
    assert before > 0.1 and after < before / 3, (before, after)


def test_few_audits_move_the_map_little_and_none_leave_the_confidence_alone():
    assert Recalibration().apply(0.8) == 0.8 and fit_recalibration([]) == Recalibration()
    few = fit_recalibration([(0.95, False), (0.9, True)])
    assert 0.5 < few.slope <= 1.0 and few.apply(0.9) < 0.9  # one surprising miss: a nudge, not a collapse
    calibrated = fit_recalibration(simulate(2_000, 2, 1.0))
    assert calibrated.slope == pytest.approx(1.0, abs=0.15) and abs(calibrated.intercept) < 0.2
    with pytest.raises(ValueError):
        fit_recalibration([(0.5, True)], prior_sd=0)
