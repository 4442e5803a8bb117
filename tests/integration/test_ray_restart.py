"""The whole Ray cluster goes away mid-job; a fresh cluster on the same job store
finishes the job, with exactly one grade per item. Each cluster lives in its own
subprocess (helpers/ray_restart_phase.py), beside the session's cluster."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from raygrade.testing.fake_openai import FakeOpenAIServer

HELPER = Path(__file__).parent / "helpers" / "ray_restart_phase.py"
STUDENTS = 48


def phase(*args: str) -> dict:
    proc = subprocess.run([sys.executable, str(HELPER), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.chaos
def test_job_completes_after_the_ray_cluster_restarts(tmp_path):
    server = FakeOpenAIServer(api_key="sk-test", latency_s=1.0).start()
    store_url = f"sqlite:///{tmp_path}/restart.db"
    try:
        first = phase("submit", store_url, server.base_url, str(STUDENTS))
        assert first["state"] == "running" and 0 < first["graded_before_restart"] < STUDENTS
        sent_before = sum(1 for r in server.log if r.status == 200)
        from raygrade.store import JobStore

        store = JobStore(store_url)
        between = store.status(first["job_id"])
        store.close()
        assert between.state.value == "running" and between.progress.items_graded < STUDENTS
        second = phase("resume", store_url, server.base_url, str(STUDENTS), first["job_id"])
    finally:
        server.stop()
    assert second["state"] == "succeeded", second
    keys = [tuple(k) for k in second["keys"]]
    assert len(keys) == STUDENTS and len(set(keys)) == STUDENTS and not second["errors"]
    assert sum(1 for r in server.log if r.status == 200) > sent_before  # the new cluster did the rest
