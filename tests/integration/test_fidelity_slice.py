"""A small slice of benchmarks/fidelity.py on SAF (baseline grader, text and image paths)."""

import importlib.util
import json
from pathlib import Path

import pytest

from raygrade.datasets.saf import find_saf

ROOT = Path(__file__).resolve().parents[2]


def test_fidelity_slice(tmp_path):
    if find_saf() is None:
        pytest.skip("SAF not found at ../shared/data/saf (set RAYGRADE_SAF_PATH)")
    spec = importlib.util.spec_from_file_location("fidelity", ROOT / "benchmarks" / "fidelity.py")
    fidelity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fidelity)
    report = fidelity.main(["--limit", "6", "--configs", "baseline", "--paths", "text,image", "--n-boot", "50",
                            "--out", str(tmp_path)])
    assert report["answers"] == 6 and set(report["runs"]) == {"baseline/text", "baseline/image"}
    for run in report["runs"].values():
        assert run["graded"] == 6 and run["invalid_output_rate"] == 0
        for m in ("exact", "kappa", "qwk"):
            ci = run["agreement"][m]
            assert ci["lo"] <= ci["value"] <= ci["hi"]
        assert [c["coverage"] for c in run["coverage"]][-1] == 1.0
        assert 0 <= run["ece"]["lo"] <= run["ece"]["value"] <= run["ece"]["hi"] <= 1
        pq = run["qwk_per_question"]  # one answer per question in this slice: no question's QWK counts
        assert pq["questions"] + len(pq["left_out"]) == len(run["per_question"]) > 0
        assert pq["value"] is None if not pq["questions"] else pq["lo"] <= pq["value"] <= pq["hi"]
    saved = json.loads((tmp_path / "fidelity.json").read_text())
    assert saved["answers"] == 6
    for name in ("confusion_baseline_text.png", "confusion_baseline_image.png", "coverage.png", "fidelity.md"):
        assert (tmp_path / name).stat().st_size > 0


def test_fidelity_calibration_slice_against_the_fake_endpoint(tmp_path, monkeypatch):
    """``--calibrate`` fits a map on training answers graded by the endpoint (the fake
    server grades at chance with a self-reported 0.9), applies it and writes it."""
    if find_saf() is None:
        pytest.skip("SAF not found at ../shared/data/saf (set RAYGRADE_SAF_PATH)")
    from raygrade.calibration import ConfidenceCalibration
    from raygrade.testing.fake_openai import FakeOpenAIProcess

    spec = importlib.util.spec_from_file_location("fidelity", ROOT / "benchmarks" / "fidelity.py")
    fidelity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fidelity)
    monkeypatch.setenv("FAKE_KEY", "sk-test")
    server = FakeOpenAIProcess(latency_s=0.0)
    try:
        report = fidelity.main(["--limit", "8", "--configs", "endpoint", "--paths", "text", "--endpoint-url",
                                server.base_url, "--endpoint-model", "fake", "--endpoint-key-env", "FAKE_KEY",
                                "--calibrate", "30", "--baseline-agreement", "--n-boot", "20", "--out", str(tmp_path)])
    finally:
        server.proc.terminate()
    run = report["runs"]["endpoint/text"]
    cal = run["calibrated"]
    assert cal["fit_answers"] == 30 and cal["source"] == "self_reported"
    # The fitted map gives mean confidence = accuracy on the fitting answers, not the raw 0.9.
    saved = ConfidenceCalibration.load(tmp_path / "calibration_endpoint_text.json")
    assert saved.n == 30 and "all" in saved.curves
    assert cal["mean_confidence"] < 0.9 and cal["ece"]["value"] <= run["ece"]["value"]
