"""A two-node Ray cluster on this machine for ``test_two_nodes.py`` (run as a subprocess).

``ray.cluster_utils.Cluster`` starts a head raylet (resource ``head``) and a second raylet
(resource ``model_node``); the raygrade app deploys SmolLM2 with ``ray.serve.llm``
(``RaygradeArgs.models``) pinned to the second node and its Grader replicas pinned to the head;
a job is graded through Serve's handles across the two, then a bulk regrade (Ray Data actors)
grades through the same deployment. Usage: ``two_node_cluster.py STORE_URL OUT_DIR``. Prints
one JSON line: the application's deployments, the job's state, progress, usage and grades, the
node of each replica, and the bulk regrade's summary and rows.
"""

import json
import sys
import uuid
from pathlib import Path

import ray
from ray import serve
from ray.cluster_utils import Cluster

from raygrade.app import build_app
from raygrade.cli import Client
from raygrade.config import ApiConfig, LocalEngineConfig, ProviderConfig, RaygradeArgs, StoreConfig, local_vllm_batcher
from raygrade.engine.local_vllm import prepare_model
from raygrade.protocol import GradingJob
from raygrade.selfhosted import ServedModelConfig
from raygrade.testing.ports import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/, for support (run as a script)
from support.engines import FEEDBACK_MAX_CHARS  # noqa: E402


def text_job(n: int) -> GradingJob:
    """``n`` students, one text page each, answering two questions (max 2 and 1 points)."""
    return GradingJob.model_validate({
        "assessment": {"questions": [
            {"id": "q1", "prompt": "What does a router do?", "max_score": 2,
             "reference_answer": "It forwards packets between networks using their destination address."},
            {"id": "q2", "prompt": "Name one transport-layer protocol.", "max_score": 1,
             "reference_answer": "TCP or UDP."}]},
        "submissions": [{"student_id": f"s{i}", "pages": [
            {"type": "text", "text": "A router forwards packets to other networks. TCP is a transport protocol."}]}
            for i in range(n)]})


def regrade(args: RaygradeArgs, model: ServedModelConfig, out_dir: Path) -> dict:
    """A bulk regrade of one student through the app's model deployment (its handle, on whichever
    node the Ray Data actor runs), at bulk priority in the same budget: its summary and rows."""
    import pyarrow.parquet as pq

    from raygrade.bulk import RegradeConfig, run_regrade
    from raygrade.datasets import write_dataset

    job = text_job(1)
    rows = [{"submission_id": s.student_id, "student_id": s.student_id, "question_ids": ["q1", "q2"],
             "page_texts": [s.pages[0].text], "human_scores": json.dumps({"q1": 2, "q2": 1})}
            for s in job.submissions]
    ds = write_dataset(out_dir / "ds", job.assessment, rows)
    summary = run_regrade(RegradeConfig(
        input=str(ds), output=str(out_dir / "out"), provider=args.provider, batcher=args.batcher,
        namespace=args.namespace, actors=1, model_deployment=("two", model.deployment_name)))
    table = pq.read_table(out_dir / "out" / "results").to_pylist()
    return {"failed_items": summary.failed_items,
            "rows": [(r["submission_id"], r["question_id"], r["model"], r["error_type"]) for r in table]}


def main() -> None:
    store_url, out_dir = sys.argv[1], Path(sys.argv[2])
    folder = str(prepare_model(LocalEngineConfig()))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"head": 1}})
    cluster.add_node(num_cpus=2, resources={"model_node": 1})
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
        model = ServedModelConfig(model_id="smollm2-remote", model_source=folder, device="cpu",
                                  resources_per_replica={"model_node": 0.01},
                                  engine_kwargs={"max_model_len": 4096})
        provider = ProviderConfig(name="remote", kind="serve_llm", model="smollm2-remote", api_key_env=None,
                                  supports_vision=False, image_token_rule="none", tokenizer="hf",
                                  tokenizer_path=folder, context_window=4096, max_completion_tokens=1024,
                                  schema_bounds=True, check_on_start=False, feedback_max_chars=FEEDBACK_MAX_CHARS,
                                  timeout_s=900.0)  # CPU decoding (≈ 7 tokens/s per stream), as the embedded model's
        on_head = {"num_cpus": 0, "resources": {"head": 0.01}}
        args = RaygradeArgs(api=ApiConfig(auth="disabled"),
                            provider=provider, models=[model], batcher=local_vllm_batcher(),
                            store=StoreConfig(url=store_url), namespace=f"rg-two-nodes-{uuid.uuid4().hex[:6]}",
                            deployment_options={"Grader": {"ray_actor_options": on_head, "num_replicas": 2,
                                                           "autoscaling_config": None}})
        serve.run(build_app(args), name="two", route_prefix="/two")
        deployments = sorted(serve.status().applications["two"].deployments)
        client = Client(f"http://127.0.0.1:{port}/two", timeout_s=120)
        # One student per request, online and in bulk: each is a CPU decode of many seconds.
        st = client.wait(client.submit(text_job(2)).id, timeout_s=600, poll_s=1.0, progress=False)
        res = client.results(st.id)
        from ray.util.state import list_actors, list_nodes

        nodes = {n.node_id: ("model_node" if "model_node" in (n.resources_total or {}) else "head")
                 for n in list_nodes(detail=True)}
        placed = {}
        for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=1000):
            if a.class_name and a.class_name.startswith("ServeReplica:two:"):
                placed.setdefault(a.class_name.split(":", 2)[2], set()).add(nodes.get(a.node_id, "?"))
        bulk = regrade(args, model, out_dir)
        print(json.dumps({"deployments": deployments, "state": st.state.value, "graded": st.progress.items_graded,
                          "errors": [(e.type, e.message) for e in res.errors],
                          "results": [(r.question_id, r.score, r.model) for r in res.results],
                          "usage": {"prompt_tokens": st.usage.prompt_tokens,
                                    "completion_tokens": st.usage.completion_tokens},
                          "placed": {k: sorted(v) for k, v in placed.items()}, "bulk": bulk}))
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
