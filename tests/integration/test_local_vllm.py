"""One job through the real embedded engine: OCR → batcher → graders → CPU vLLM (slow, runs in CI)."""

import uuid

import pytest

from raygrade.cli import Client
from raygrade.config import RaygradeArgs, local_vllm_provider
from raygrade.datasets.sample_jobs import sample_job


@pytest.mark.slow
def test_sample_job_through_local_vllm(serve_url):
    from ray import serve

    from raygrade.app import build_app

    args = RaygradeArgs(provider=local_vllm_provider(), namespace=f"rg-vllm-{uuid.uuid4().hex[:8]}")
    serve.run(build_app(args), name="local", route_prefix="/local")
    try:
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
