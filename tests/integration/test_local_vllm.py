"""One job through the real embedded engine: OCR → batcher → graders → CPU vLLM (slow, runs in CI)."""

import uuid

import pytest

from raygrade.cli import Client
from raygrade.config import ApiConfig, RaygradeArgs, local_vllm_provider
from raygrade.datasets.sample_jobs import sample_job


@pytest.mark.slow
def test_sample_job_through_local_vllm(serve_url):
    import time

    import httpx
    from ray import serve
    from ray.serve.api import RunTarget

    from raygrade.app import build_app

    args = RaygradeArgs(api=ApiConfig(auth="disabled"),
                        provider=local_vllm_provider(), namespace=f"rg-vllm-{uuid.uuid4().hex[:8]}")
    # Not waiting for the application: /readyz is 503 while the model loads, then 200 (/healthz is
    # 200 as soon as the ingress answers).
    serve.run_many([RunTarget(build_app(args), name="local", route_prefix="/local")],
                   wait_for_applications_running=False)
    try:
        seen: list[tuple[int, str | None]] = []  # (HTTP status, the body's "status")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and (not seen or seen[-1][0] != 200):
            try:
                r = httpx.get(f"{serve_url}/local/readyz", timeout=30)
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                seen.append((r.status_code, body.get("status") if isinstance(body, dict) else None))
            except httpx.HTTPError:
                pass
            if not seen or seen[-1][0] != 200:
                time.sleep(1.0)
        # Before the route is up the proxy answers 404/503 itself; then the ingress: not ready, then ready.
        ours = [s for s in dict.fromkeys(seen) if s[1] is not None]
        assert ours == [(503, "not_ready"), (200, "ready")], seen
        client = Client(f"{serve_url}/local", timeout_s=120)
        job = sample_job()
        st = client.wait(client.submit(job).id, timeout_s=900, poll_s=1.0, progress=False)
        res = client.results(st.id)
        assert st.state.value == "succeeded", res.errors
        assert len(res.results) == 8 and st.progress.items_graded == 8
        grids = {q.id: q.allowed_scores() for q in job.assessment.questions}
        for r in res.results:
            assert r.model == "smollm2-135m-instruct"
            assert r.score in grids[r.question_id] and 0 <= r.confidence <= 1
            assert r.confidence_source == "score_logprob", "vLLM returned token logprobs for the score"
        assert st.usage.prompt_tokens > 200 and st.usage.completion_tokens > 0
    finally:
        serve.delete("local")


@pytest.mark.slow
def test_jobs_regrade_deploys_the_embedded_model_for_its_run(ray_cluster, tmp_path, monkeypatch, capsys):
    """``jobs/regrade.py`` with no provider flag and no API key: the embedded model is deployed on
    the cluster for the run (Ray's LLM serving library), graded through its deployment handle by the
    Ray Data actors at bulk priority, and removed when the run ends."""
    import importlib.util
    import json
    from pathlib import Path

    import pyarrow.parquet as pq
    from ray import serve

    from raygrade.datasets import write_dataset
    from raygrade.protocol import Assessment, Question

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    questions = [Question(id="q1", prompt="What does a router do?", max_score=1,
                          reference_answer="It forwards packets between networks.")]
    rows = [{"submission_id": f"sub-{i}", "student_id": f"st{i}", "question_ids": ["q1"],
             "page_texts": ["A router forwards packets to other networks."], "human_scores": json.dumps({"q1": 1.0})}
            for i in range(3)]
    ds = write_dataset(tmp_path / "ds", Assessment(questions=questions), rows)
    script = Path(__file__).resolve().parents[2] / "jobs/regrade.py"
    spec = importlib.util.spec_from_file_location("regrade_job", script)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    job.main([str(ds), str(tmp_path / "out"), "--actors", "1", "--namespace", f"rg-bulk-{uuid.uuid4().hex[:6]}"])
    out = capsys.readouterr().out
    assert "deploying model 'smollm2-135m-instruct' for this run" in out
    table = pq.read_table(tmp_path / "out" / "results").to_pylist()
    assert len(table) == 3 and all(r["error_type"] in (None, "") for r in table), table
    assert {r["model"] for r in table} == {"smollm2-135m-instruct"} and all(0 <= r["score"] <= 1 for r in table)
    assert "raygrade-regrade-model" not in serve.status().applications  # removed after the run


@pytest.mark.slow
def test_jobs_regrade_vllm_batch_mode_runs_the_embedded_model_offline(ray_cluster, tmp_path, monkeypatch, capsys):
    """``jobs/regrade.py --mode vllm-batch``: the Batch API's JSONL through vLLM's offline batch
    runner (a Ray task on one CPU), answers replayed through the same grader; one row per item."""
    import importlib.util
    import json
    from pathlib import Path

    import pyarrow.parquet as pq

    from raygrade.datasets import write_dataset
    from raygrade.protocol import Assessment, Question

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    questions = [Question(id="q1", prompt="What does a router do?", max_score=2, score_step=1,
                          reference_answer="It forwards packets between networks."),
                 Question(id="q2", prompt="What does DNS resolve?", max_score=1, reference_answer="Names to IPs.")]
    rows = [{"submission_id": f"sub-{i}", "student_id": f"st{i}", "question_ids": None,
             "page_texts": [f"Answer {i}: a router forwards packets; DNS maps names to addresses."]}
            for i in range(4)]
    ds = write_dataset(tmp_path / "ds", Assessment(questions=questions), rows)
    script = Path(__file__).resolve().parents[2] / "jobs/regrade.py"
    spec = importlib.util.spec_from_file_location("regrade_job_vllm_batch", script)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    job.main([str(ds), str(tmp_path / "out"), "--mode", "vllm-batch", "--poll-interval-s", "1", "--max-rounds", "2"])
    out = capsys.readouterr().out
    assert "running model 'smollm2-135m-instruct' offline" in out
    table = pq.read_table(tmp_path / "out" / "results").to_pylist()
    assert sorted((r["submission_id"], r["question_id"]) for r in table) == sorted(
        (f"sub-{i}", q) for i in range(4) for q in ("q1", "q2"))
    graded = [r for r in table if not r["error_type"]]
    assert graded and {r["model"] for r in graded} == {"smollm2-135m-instruct"}
    assert all(r["score"] in (0, 1, 2) for r in graded if r["question_id"] == "q1")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["mode"] == "vllm-batch" and report["batch_ids"] and report["prompt_tokens"] > 0
