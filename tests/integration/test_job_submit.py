"""jobs/README.md's bulk regrade as users start it: ``ray job submit --working-dir . -- python
jobs/regrade.py IN OUT ...`` against the session's cluster (its dashboard on 127.0.0.1 takes the
job), the repository packaged as the job's working directory (.gitignore respected: no .venv),
the driver's ``python`` the one on the raylet's PATH, progress streamed back and the exit code
the job's. The command is read out of jobs/README.md; only the address, the paths and the
provider are put in (the README's ``--serve-config serve_config.yaml`` grades with the CPU model,
which tests/integration/test_local_vllm.py covers): here the fake OpenAI server grades."""

import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq

from raygrade.datasets import write_dataset
from raygrade.protocol import Assessment, Question
from raygrade.testing.fake_openai import fake_provider_config

ROOT = Path(__file__).resolve().parents[2]
STUDENTS = 12


def readme_submit() -> tuple[dict[str, str], list[str]]:
    """The first ``ray job submit`` command of jobs/README.md: (its environment assignments, argv)."""
    text = (ROOT / "jobs" / "README.md").read_text()
    block = re.search(r"```\n(.*?)```", text, flags=re.S).group(1)
    line = re.search(r"^.*ray job submit.*$", block.replace("\\\n", " "), flags=re.M).group(0)
    words = shlex.split(line)
    env = dict(w.split("=", 1) for w in words if re.match(r"^[A-Z_]+=", w))
    return env, [w for w in words if not re.match(r"^[A-Z_]+=", w)]


def test_ray_job_submit_runs_the_regrade_as_jobs_readme_writes_it(ray_cluster, fake, tmp_path):
    env_vars, argv = readme_submit()
    assert argv[:5] == ["ray", "job", "submit", "--working-dir", "."] and argv[5:8] == ["--", "python",
                                                                                        "jobs/regrade.py"], argv
    assert env_vars.get("RAY_ADDRESS", "").startswith("http://127.0.0.1:"), env_vars
    questions = [Question(id="q1", prompt="What does ARP resolve?", max_score=1, reference_answer="IP to MAC")]
    rows = [{"submission_id": f"sub-{i:02d}", "student_id": f"st{i}", "question_ids": ["q1"],
             "page_texts": [f"answer number {i}"], "human_scores": json.dumps({"q1": 0.5})} for i in range(STUDENTS)]
    dataset = write_dataset(tmp_path / "ds", Assessment(questions=questions), rows, rows_per_file=4)
    provider = tmp_path / "provider.json"
    provider.write_text(fake_provider_config(fake.base_url).model_dump_json())
    out = tmp_path / "out"
    # IN OUT and the provider in place of the README's SAF paths and serve_config.yaml; every other word as written
    rest = argv[10:]
    assert rest[:2] == ["--serve-config", "serve_config.yaml"], rest
    cmd = [*argv[:8], str(dataset), str(out), "--provider", str(provider), *rest[2:], "--submissions-per-block", "4"]
    env = {**os.environ, **env_vars, "RAY_ADDRESS": os.environ["RAYGRADE_TEST_DASHBOARD_URL"]}
    deadline = time.monotonic() + 60
    while True:  # a head started moments ago may not have its job agent yet: Ray says to try again later
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        if "No available agent to submit job" not in proc.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert "succeeded" in proc.stdout, proc.stdout[-3000:]
    assert f"regrade: {STUDENTS}/{STUDENTS} submissions" in proc.stdout, proc.stdout[-3000:]
    results = pq.read_table(out / "results").to_pylist()
    assert sorted(r["submission_id"] for r in results) == [f"sub-{i:02d}" for i in range(STUDENTS)]
    assert all(r["error_type"] is None and r["score"] == 0.5 for r in results)
    assert sum(r.status == 200 for r in fake.log) >= STUDENTS // 4, "graded by the provider, through the job"
    assert json.loads((out / "report.json").read_text())["agreement"]["n"]["value"] == STUDENTS
