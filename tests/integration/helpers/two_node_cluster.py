"""A two-node Ray cluster on this machine for ``test_two_nodes.py`` (run as a subprocess).

``ray.cluster_utils.Cluster`` starts a head raylet (resource ``head``) and a second raylet
(resource ``model_node``); the raygrade app deploys SmolLM2 with ``ray.serve.llm`` pinned to
the second node and its Grader replicas pinned to the head; a job is graded through Serve's
handles across the two. Prints one JSON line: the job's state, items, and the node of each
replica.
"""

import json
import sys
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


def main() -> None:
    store_url = sys.argv[1]
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
                            store=StoreConfig(url=store_url), namespace="rg-two-nodes",
                            deployment_options={"Grader": {"ray_actor_options": on_head, "num_replicas": 2,
                                                           "autoscaling_config": None}})
        serve.run(build_app(args), name="two", route_prefix="/two")
        job = GradingJob.model_validate({
            "assessment": {"questions": [{"id": "q1", "prompt": "Name one transport-layer protocol.",
                                          "max_score": 1, "reference_answer": "TCP or UDP."}]},
            "submissions": [{"student_id": f"s{i}", "pages": [{"type": "text", "text": "TCP"}]} for i in range(4)]})
        client = Client(f"http://127.0.0.1:{port}/two", timeout_s=120)
        st = client.wait(client.submit(job).id, timeout_s=600, poll_s=1.0, progress=False)
        from ray.util.state import list_actors, list_nodes

        nodes = {n.node_id: ("model_node" if "model_node" in (n.resources_total or {}) else "head")
                 for n in list_nodes(detail=True)}
        placed = {}
        for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=1000):
            if a.class_name and a.class_name.startswith("ServeReplica:two:"):
                placed.setdefault(a.class_name.split(":", 2)[2], set()).add(nodes.get(a.node_id, "?"))
        print(json.dumps({"state": st.state.value, "graded": st.progress.items_graded,
                          "placed": {k: sorted(v) for k, v in placed.items()}}))
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
