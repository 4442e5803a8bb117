"""User mistakes in every command end in one line naming the problem (exit 2), not a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("cmd, says", [
    ([sys.executable, "-m", "raygrade.cli", "demo", "--saf", "/nope/saf"], "SAF dataset not found at /nope/saf"),
    ([sys.executable, "-m", "raygrade.datasets", "saf", "/tmp/rg-out", "--saf", "/nope/saf"], "SAF dataset not found"),
    ([sys.executable, "jobs/regrade.py", "/nope/dataset", "/tmp/rg-out", "--baseline"], "/nope/dataset"),
    ([sys.executable, "jobs/regrade.py", "/nope/dataset", "/tmp/rg-out", "--provider", "/nope/provider.yaml"],
     "/nope/provider.yaml"),
])
def test_a_user_mistake_is_one_line(cmd, says):
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and says in lines[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_validation_errors_are_joined_on_one_line():
    from pydantic import ValidationError

    from raygrade._cli import one_line
    from raygrade.config import RaygradeArgs

    with pytest.raises(ValidationError) as err:
        RaygradeArgs.model_validate({"provider": {"modle": "x", "timeout_s": -1}})
    line = one_line(err.value)
    assert "\n" not in line and "provider.modle" in line and "provider.timeout_s" in line
