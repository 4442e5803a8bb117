"""A self-hosted model inside the raygrade application on Ray's LLM serving library (slow, runs in CI).

``RaygradeArgs.models`` deploys SmolLM2 (the packaged model) as a ``ray.serve.llm`` LLMServer
on a CPU bundle; the provider ``kind: serve_llm`` makes every Grader replica call it through
its Serve deployment handle, with JSON-schema output, and the job completes; a bulk regrade
(Ray Data actors) grades through the same deployment.
"""

import uuid

import pytest
from support.engines import FEEDBACK_MAX_CHARS

from raygrade.cli import Client
from raygrade.config import ApiConfig, LocalEngineConfig, ProviderConfig, RaygradeArgs, local_vllm_batcher
from raygrade.protocol import GradingJob
from raygrade.selfhosted import ServedModelConfig


def text_job(n: int = 3) -> GradingJob:
    return GradingJob.model_validate({
        "assessment": {"questions": [
            {"id": "q1", "prompt": "What does a router do?", "max_score": 2,
             "reference_answer": "It forwards packets between networks using their destination address."},
            {"id": "q2", "prompt": "Name one transport-layer protocol.", "max_score": 1,
             "reference_answer": "TCP or UDP."}]},
        "submissions": [{"student_id": f"s{i}", "pages": [
            {"type": "text", "text": "A router forwards packets to other networks. TCP is a transport protocol."}]}
            for i in range(n)]})


@pytest.mark.slow
def test_a_job_and_a_bulk_regrade_through_a_self_hosted_model_on_ray_serve_llm(serve_url, tmp_path):
    from ray import serve

    from raygrade.app import build_app
    from raygrade.engine.local_vllm import prepare_model

    folder = str(prepare_model(LocalEngineConfig()))
    model = ServedModelConfig(model_id="smollm2-serve", model_source=folder, device="cpu",
                              engine_kwargs={"max_model_len": 4096})
    provider = ProviderConfig(name="self-hosted", kind="serve_llm", model="smollm2-serve", api_key_env=None,
                              supports_vision=False, image_token_rule="none", tokenizer="hf",
                              tokenizer_path=folder, context_window=4096, max_completion_tokens=1024,
                              schema_bounds=True, check_on_start=False, feedback_max_chars=FEEDBACK_MAX_CHARS,
                              timeout_s=900.0)  # CPU decoding: ≈ 7 tokens/s per stream (as the embedded model's)
    args = RaygradeArgs(api=ApiConfig(auth="disabled"), provider=provider, models=[model], batcher=local_vllm_batcher(),
                        namespace=f"rg-llm-{uuid.uuid4().hex[:8]}")
    serve.run(build_app(args), name="selfhosted", route_prefix="/selfhosted")
    try:
        deployments = serve.status().applications["selfhosted"].deployments
        assert any(name.startswith("raygrade:") for name in deployments), sorted(deployments)
        client = Client(f"{serve_url}/selfhosted", timeout_s=120)
        # One student per request, online and in bulk: each is a CPU decode of a whole minute or more.
        st = client.wait(client.submit(text_job(1)).id, timeout_s=600, poll_s=1.0, progress=False)
        res = client.results(st.id)
        assert st.state.value == "succeeded", [(e.type, e.message) for e in res.errors]
        assert len(res.results) == 2 and {r.model for r in res.results} == {"smollm2-serve"}
        assert all(0 <= r.score <= (2 if r.question_id == "q1" else 1) for r in res.results)
        assert st.usage.prompt_tokens > 100 and st.usage.completion_tokens > 0, st.usage

        # A bulk regrade through the same deployment (its handle, on whichever node it runs), in the
        # same budget at bulk priority.
        import json

        import pyarrow.parquet as pq

        from raygrade.bulk import RegradeConfig, run_regrade
        from raygrade.datasets import write_dataset

        job = text_job(1)
        rows = [{"submission_id": s.student_id, "student_id": s.student_id, "question_ids": ["q1", "q2"],
                 "page_texts": [s.pages[0].text], "human_scores": json.dumps({"q1": 2, "q2": 1})}
                for s in job.submissions]
        ds = write_dataset(tmp_path / "ds", job.assessment, rows)
        summary = run_regrade(RegradeConfig(
            input=str(ds), output=str(tmp_path / "out"), provider=args.provider, batcher=args.batcher,
            namespace=args.namespace, actors=1, model_deployment=("selfhosted", model.deployment_name)))
        table = pq.read_table(tmp_path / "out" / "results").to_pylist()
        assert summary.failed_items == 0 and len(table) == 2, table
        assert {r["model"] for r in table} == {"smollm2-serve"}
    finally:
        serve.delete("selfhosted")


def test_the_gpu_serve_config_places_its_model_on_gpu_nodes(ray_cluster):
    """deploy/serve_config.selfhosted-gpu.yaml as shipped: Serve's schema, the builder, and the model's
    deployment asks for a GPU bundle on the named accelerator and scales from zero (built, not run)."""
    from pathlib import Path

    import yaml
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.deployment import Application
    from ray.serve.schema import ServeDeploySchema

    path = Path(__file__).resolve().parents[2] / "deploy" / "serve_config.selfhosted-gpu.yaml"
    app = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text())).applications[0]
    assert isinstance(call_user_app_builder_with_args_if_necessary(import_attr(app.import_path), app.args),
                      Application)
    args = RaygradeArgs.model_validate(app.args)
    assert args.provider.kind == "serve_llm" and args.provider.supports_vision
    dep = args.models[0].deployment()._bound_deployment
    bundles = dep._replica_config.placement_group_bundles
    assert bundles and bundles[0]["GPU"] == 1 and "accelerator_type:L40S" in bundles[0]
    auto = dep._deployment_config.autoscaling_config
    assert (auto.min_replicas, auto.max_replicas) == (0, 4)
