"""Two Ray nodes on this machine: a self-hosted model pinned to the second node, graders on the
head reaching it through Serve's handles (slow, runs in CI; its own cluster in a subprocess,
helpers/two_node_cluster.py, beside the session's)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

HELPER = Path(__file__).parent / "helpers" / "two_node_cluster.py"


@pytest.mark.slow
def test_graders_on_the_head_grade_through_a_model_on_another_node(tmp_path):
    proc = subprocess.run([sys.executable, str(HELPER), f"sqlite:///{tmp_path / 'jobs.db'}"], capture_output=True,
                          text=True, timeout=840)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # The result line; Ray may print its own lines after it while the cluster shuts down.
    out = json.loads(next(line for line in reversed(proc.stdout.splitlines()) if line.startswith("{")))
    assert out["state"] == "succeeded" and out["graded"] == 4, out
    placed = out["placed"]
    assert placed["Grader"] == ["head"], placed
    model = [v for k, v in placed.items() if k.startswith("raygrade:")]
    assert model == [["model_node"]], placed
