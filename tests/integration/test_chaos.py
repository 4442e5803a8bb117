"""Accepted work is never lost or graded twice: a job of 220 students runs while grader
replicas, the batcher and the rate-limiter actor are killed again and again and the
Serve application is restarted once, on each store back end (SQLite, PostgreSQL). The
job store and the provider's request log are the judges. Bounded: at most 240 s, loopback only,
and it stops by itself."""

import json
import os
import time
import uuid

import httpx
import pytest

from raygrade.config import ApiConfig, BatcherConfig, RaygradeArgs, StoreConfig
from raygrade.testing.fake_openai import FakeOpenAIServer, fake_provider_config

STUDENTS = 220
DEADLINE_S = 240


def job_body(n: int) -> dict:
    return {"assessment": {"questions": [
        {"id": "q1", "prompt": "Name a TCP header field.", "max_score": 2, "reference_answer": "sequence number"},
        {"id": "q2", "prompt": "What does UDP lack?", "max_score": 1, "reference_answer": "reliability"}]},
        "submissions": [{"student_id": f"student-{i:03d}", "pages": [{"type": "text", "text": f"answer {i}"}]}
                        for i in range(n)]}


def replicas(app: str, deployment: str) -> list[str]:
    import ray

    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"SERVE_REPLICA::{app}#{deployment}#")]


def kill_replica(app: str, deployment: str) -> bool:
    import ray

    names = replicas(app, deployment)
    if not names:
        return False
    try:
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    except ValueError:  # already gone
        return False
    return True


@pytest.mark.chaos
def test_chaos_every_item_graded_exactly_once(serve_url, store_url):
    import ray
    from ray import serve

    from raygrade.app import build_app
    from raygrade.ratelimit.actor import get_rate_limiter
    from raygrade.store import JobStore

    server = FakeOpenAIServer(api_key="sk-test", latency_s=1.0).start()
    namespace = f"rg-chaos-{uuid.uuid4().hex[:8]}"
    args = RaygradeArgs(api=ApiConfig(auth="disabled"), provider=fake_provider_config(server.base_url),
                        batcher=BatcherConfig(max_students_per_request=4, max_concurrent_batches=3),
                        # Every replica death here is the test's doing, not the batch's: a batch that shares
                        # a replica with others is lost with them at each kill, and batches re-dispatched
                        # together share the next replica too, so the same batch can be in flight at three
                        # of the ~10 Grader kills (CI, 2026-12-06: two batches failed with grader_error).
                        # The bound on lost calls (a poison batch) has its own test (test_dispatch.py).
                        store=StoreConfig(url=store_url, batch_lease_s=3.0, poll_interval_s=0.25,
                                          max_batch_attempts=100),
                        namespace=namespace)
    app, url = "chaos", f"{serve_url}/chaos"

    def deploy():
        serve.run(build_app(args), name=app, route_prefix="/chaos")

    deploy()
    kills = {"Grader": 0, "Batcher": 0, "token_bucket": 0, "serve_restart": 0}
    try:
        with httpx.Client(timeout=30) as http:
            r = http.post(f"{url}/v1/jobs", json=job_body(STUDENTS), headers={"Idempotency-Key": "chaos-1"})
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            items_total = r.json()["progress"]["items_total"]
            assert items_total == 2 * STUDENTS
            t0, step, status, last_kill_at = time.monotonic(), 0, r.json(), -12
            while time.monotonic() - t0 < DEADLINE_S:
                try:
                    status = http.get(f"{url}/v1/jobs/{job_id}").json()
                except httpx.HTTPError:
                    status = {}
                if status.get("state") in ("succeeded", "partial", "failed", "cancelled"):
                    break
                graded = (status.get("progress") or {}).get("items_graded", 0)
                done = graded / items_total
                if kills["serve_restart"] == 0 and done >= 0.4:
                    serve.delete(app)  # every deployment of the app goes; the store stays
                    deploy()
                    kills["serve_restart"] += 1
                    # A replay of the same submission after the restart is the same job.
                    again = http.post(f"{url}/v1/jobs", json=job_body(STUDENTS), headers={"Idempotency-Key": "chaos-1"})
                    assert again.status_code == 200 and again.json()["id"] == job_id
                elif done < 0.95 and graded >= last_kill_at + 12:  # the next kill once work moved on
                    target = ("Grader", "Batcher", "Grader", "token_bucket")[step % 4]
                    if target == "token_bucket":
                        ray.kill(get_rate_limiter(namespace), no_restart=False)  # Ray restarts it, empty
                        kills[target] += 1
                    elif kill_replica(app, target):
                        kills[target] += 1
                    step += 1
                    last_kill_at = graded
                n_graded = (status.get("progress") or {}).get("items_graded")
                print(f"{time.monotonic() - t0:6.1f}s {status.get('state')} {n_graded} {kills}", flush=True)
                time.sleep(1.0)
            if status.get("state") != "succeeded":  # the items' errors say why
                errors = http.get(f"{url}/v1/jobs/{job_id}/results").json().get("errors")
                pytest.fail(f"job {status.get('state')} after kills {kills}: errors {errors}")
            results = http.get(f"{url}/v1/jobs/{job_id}/results").json()
    finally:
        serve.delete(app)
        server.stop()
        try:
            ray.kill(get_rate_limiter(namespace), no_restart=True)
        except Exception:
            pass

    # The store: exactly one grade per (student, question), no errors.
    keys = [(g["student_id"], g["question_id"]) for g in results["results"]]
    assert len(keys) == items_total and len(set(keys)) == items_total and not results["errors"]
    store = JobStore(store_url)
    report = store.batch_report(job_id)
    store.close()
    assert all(b["state"] == "done" for b in report)
    # The provider's log: every stored grade was asked of the provider at least once.
    alias = {f"student-{i:03d}": f"s{i + 1}" for i in range(STUDENTS)}
    asked: dict[str, int] = {}
    for rec in server.log:
        if rec.status == 200:
            for item in rec.items:
                asked[item] = asked.get(item, 0) + 1
    assert all(f"{alias[s]}/{q}" in asked for s, q in keys)
    counts = {
        "students": STUDENTS, "items": items_total, "grades_stored": len(keys), "errors": len(results["errors"]),
        "kills": kills, "batches": len(report),
        "batch_dispatches": sum(b["attempts"] for b in report),
        "batches_redispatched": sum(1 for b in report if b["attempts"] > 1),
        "max_grader_losses": max(b["grader_losses"] for b in report),
        "duplicate_grades_dropped": sum(b["duplicates_dropped"] for b in report),
        "provider_requests_ok": sum(1 for r in server.log if r.status == 200),
        "items_sent_to_provider_more_than_once": sum(1 for n in asked.values() if n > 1),
        "wall_s": round(time.monotonic() - t0, 1),
    }
    counts["store"] = store_url.split(":", 1)[0]
    print("chaos:", json.dumps(counts))
    if os.environ.get("RAYGRADE_CHAOS_REPORT"):
        with open(os.environ["RAYGRADE_CHAOS_REPORT"], "a") as f:
            f.write(json.dumps(counts) + "\n")
    assert kills["serve_restart"] == 1 and kills["Batcher"] >= 1 and kills["Grader"] >= 2 and kills["token_bucket"] >= 1
