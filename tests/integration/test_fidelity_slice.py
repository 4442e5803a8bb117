"""A small slice of benchmarks/fidelity.py on SAF (baseline grader, text and image paths)."""

import importlib.util
import json
from pathlib import Path

import pytest

from raygrade.demo.saf import find_saf

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
        assert 0 <= run["ece"] <= 1
    saved = json.loads((tmp_path / "fidelity.json").read_text())
    assert saved["answers"] == 6
    for name in ("confusion_baseline_text.png", "confusion_baseline_image.png", "coverage.png", "fidelity.md"):
        assert (tmp_path / name).stat().st_size > 0
