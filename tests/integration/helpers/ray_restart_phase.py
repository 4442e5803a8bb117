"""One life of a Ray cluster for ``test_ray_restart.py`` (run as a subprocess).

Phase ``submit``: start a local Ray cluster and the raygrade app, submit a job, wait
until part of it is graded, then shut the whole cluster down mid-job. Phase
``resume``: start a fresh cluster (nothing survives in Ray: no actors, no GCS state),
deploy the same app on the same store, and wait for the job to finish. Prints one
JSON line.
"""

import json
import sys
import time

import httpx
import psutil
import ray
from ray import serve

from raygrade.app import build_app
from raygrade.config import ApiConfig, BatcherConfig, RaygradeArgs, StoreConfig
from raygrade.testing.fake_openai import fake_provider_config
from raygrade.testing.ports import free_port


def start_ray() -> None:
    """A fresh local cluster. On a loaded machine the raylet may not register with the GCS within
    Ray's fixed 30 s ("The current node timed out during startup"): then the processes this start
    left are killed and it is tried once more (the test is about the job, not Ray's start-up)."""
    for attempt in (1, 2):
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
            return
        except Exception as exc:
            if attempt == 2 or "timed out during startup" not in str(exc):
                raise
            for child in psutil.Process().children(recursive=True):
                child.kill()
            ray.shutdown()


def main() -> None:
    phase, store_url, base_url, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    job_id = sys.argv[5] if len(sys.argv) > 5 else None
    args = RaygradeArgs(api=ApiConfig(auth="disabled"), provider=fake_provider_config(base_url),
                        batcher=BatcherConfig(max_students_per_request=4, max_concurrent_batches=2),
                        store=StoreConfig(url=store_url, batch_lease_s=3.0, poll_interval_s=0.25),
                        namespace="rg-restart")
    start_ray()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    serve.run(build_app(args), name="restart", route_prefix="/r")
    url = f"http://127.0.0.1:{port}/r"
    out: dict = {}
    with httpx.Client(timeout=30) as http:
        if phase == "submit":
            body = {"assessment": {"questions": [{"id": "q1", "prompt": "Name a TCP header field.", "max_score": 2}]},
                    "submissions": [{"student_id": f"st-{i:03d}", "pages": [{"type": "text", "text": f"a {i}"}]}
                                    for i in range(n)]}
            job_id = http.post(f"{url}/v1/jobs", json=body).json()["id"]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                st = http.get(f"{url}/v1/jobs/{job_id}").json()
                if st["progress"]["items_graded"] >= n // 4:
                    break
                time.sleep(0.2)
            out = {"job_id": job_id, "graded_before_restart": st["progress"]["items_graded"], "state": st["state"]}
        else:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                st = http.get(f"{url}/v1/jobs/{job_id}").json()
                if st["state"] not in ("queued", "running"):
                    break
                time.sleep(0.3)
            res = http.get(f"{url}/v1/jobs/{job_id}/results").json()
            out = {"state": st["state"], "progress": st["progress"],
                   "keys": [[g["student_id"], g["question_id"]] for g in res["results"]], "errors": res["errors"]}
    if phase == "resume":
        serve.shutdown()
    # The cluster this driver started goes away with it; in the submit phase with no
    # graceful Serve shutdown, so batches in flight are cut off as in a crash.
    ray.shutdown()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
