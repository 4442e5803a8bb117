"""A short slice of benchmarks/hosted_vs_self_hosted.py on CPU (slow, runs in CI): the simulated
hosted endpoint and the tiny vision model on ray.serve.llm grade the same sample pages, and the
report carries every figure for both (its own Ray cluster, in a subprocess)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.engines import FEEDBACK_MAX_CHARS

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "hosted_vs_self_hosted.py"


@pytest.mark.slow
def test_the_benchmark_reports_both_systems_on_the_same_pages(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--sample", "--students", "3", "--out", str(tmp_path),
                           "--feedback-max-chars", str(FEEDBACK_MAX_CHARS)],
                          capture_output=True, text=True, timeout=840)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "hosted_vs_self_hosted.json").read_text())
    assert report["simulated_hosted"] and "simulated" in report["systems"][0]["label"]
    assert "| hosted gpt-4o (simulated) |" in proc.stdout and "| self-hosted tiny-vlm (cpu) |" in proc.stdout
    for s in report["systems"]:
        assert s["pages"] == report["pages"] > 0 and s["requests"] > 0 and s["graded"] > 0
        assert s["pages_per_s"] > 0 and s["p95_s_per_student"] >= s["p50_s_per_student"] > 0
        assert s["prompt_tokens_per_page"] > 64 and s["cost_per_1k_pages_usd"] > 0
    assert report["systems"][0]["cost_per_1k_pages_batch_api_usd"] == report["systems"][0]["cost_per_1k_pages_usd"] / 2
