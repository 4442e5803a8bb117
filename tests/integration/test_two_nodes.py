"""A self-hosted model inside the raygrade application on Ray's LLM serving library, on a node
of its own (slow, runs in CI; its own two-node cluster in a subprocess,
helpers/two_node_cluster.py, beside the session's).

``RaygradeArgs.models`` deploys SmolLM2 (the packaged model) as a ``ray.serve.llm`` LLMServer
on a CPU bundle pinned to the second node; the provider ``kind: serve_llm`` makes every Grader
replica (pinned to the head) call it through its Serve deployment handle, with JSON-schema
output, and the job completes; a bulk regrade (Ray Data actors) grades through the same
deployment.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

HELPER = Path(__file__).parent / "helpers" / "two_node_cluster.py"


@pytest.mark.slow
def test_a_job_and_a_bulk_regrade_through_a_model_on_another_node(tmp_path):
    proc = subprocess.run([sys.executable, str(HELPER), f"sqlite:///{tmp_path / 'jobs.db'}", str(tmp_path)],
                          capture_output=True, text=True, timeout=840)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # The result line; Ray may print its own lines after it while the cluster shuts down.
    out = json.loads(next(line for line in reversed(proc.stdout.splitlines()) if line.startswith("{")))
    assert any(name.startswith("raygrade:") for name in out["deployments"]), out["deployments"]
    # The online job: 2 students × 2 questions, every grade by the model, within each question's range.
    assert out["state"] == "succeeded" and out["graded"] == 4, out
    assert len(out["results"]) == 4 and {m for _, _, m in out["results"]} == {"smollm2-remote"}, out
    assert all(0 <= score <= (2 if q == "q1" else 1) for q, score, _ in out["results"]), out["results"]
    assert out["usage"]["prompt_tokens"] > 100 and out["usage"]["completion_tokens"] > 0, out["usage"]
    placed = out["placed"]
    assert placed["Grader"] == ["head"], placed
    model = [v for k, v in placed.items() if k.startswith("raygrade:")]
    assert model == [["model_node"]], placed
    # The bulk regrade through the same deployment: one row per item, graded by the model.
    bulk = out["bulk"]
    assert bulk["failed_items"] == 0 and len(bulk["rows"]) == 2, bulk
    assert {(q, m, e) for _, q, m, e in bulk["rows"]} == {("q1", "smollm2-remote", None),
                                                          ("q2", "smollm2-remote", None)}, bulk
