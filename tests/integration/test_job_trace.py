"""A job's trace through the real deployment graph (Serve's tracing on for the test session,
sampling nothing by itself: ``tests/support/shared_cluster.py``): a caller's ``traceparent``
makes the job's spans, in the ingress, registry, batcher and grader replicas, one trace under
the caller's span, written by Serve's default exporter to the session's span files."""

import secrets
import time
from pathlib import Path

import httpx

from raygrade.cli import Client
from raygrade.tracing import read_span_files
from tests.integration.test_jobs_api import job

#: Spans a one-student text job must leave in its trace (Serve's own spans come in between).
HOPS = {"raygrade.accept", "raygrade.create", "raygrade.store create_jobs", "raygrade.nudge", "raygrade.job",
        "raygrade.read", "raygrade.plan", "raygrade.store plan_and_lease", "raygrade.batch", "raygrade.grade",
        "raygrade.limiter.acquire", "raygrade.limiter.settle"}
#: How the last batch's outcome is written: with the job's completion in one registry call when
#: the batcher knows it is the last, or (when a poll tick re-opened leasing while it was graded,
#: as on a slow CI machine) written alone and the job finished by the next loop's check.
FINISHES = ({"raygrade.store complete_and_finish"},
            {"raygrade.store complete_batch", "raygrade.store finish_if_complete"})


def complete(names: set[str]) -> bool:
    """Whether a trace's span names hold every hop and one way of finishing the job."""
    return HOPS <= names and any(f <= names for f in FINISHES)


def span_files() -> list[Path]:
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    return sorted((logs / "serve" / "spans").glob("*.json"))


def test_a_callers_traceparent_makes_the_jobs_path_one_trace(fake_app, fake):
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    r = httpx.post(f"{fake_app}/v1/jobs", json=job(1), headers={"traceparent": f"00-{trace_id}-{parent}-01"},
                   timeout=30)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert Client(fake_app).wait(job_id, timeout_s=60, poll_s=0.2, progress=False).state.value == "succeeded"
    deadline, spans = time.monotonic() + 30, []
    while time.monotonic() < deadline:  # the job's span ends just after the job does
        spans = [s for s in read_span_files(span_files()) if s["context"]["trace_id"] == f"0x{trace_id}"]
        if complete({s["name"] for s in spans}):
            break
        time.sleep(0.2)
    names = {s["name"] for s in spans}
    assert complete(names), (sorted(HOPS - names), sorted(names))
    # The provider request: "chat {model}", or "chat" where the request leaves the model to the
    # provider's configuration (OpenTelemetry's GenAI naming); the answer's model is recorded.
    [call] = [s for s in spans if s["name"].split(" ")[0] == "chat"]
    assert call["kind"] == "SpanKind.CLIENT" and call["attributes"]["gen_ai.response.model"], call
    assert call["attributes"]["gen_ai.usage.input_tokens"] > 0
    by_id = {s["context"]["span_id"]: s for s in spans}
    [accept] = [s for s in spans if s["name"] == "raygrade.accept"]
    assert accept["parent_id"] == f"0x{parent}" and accept["attributes"]["raygrade.job_id"] == job_id
    # One tree: every other span's parent is in the trace (across the proxy, replicas and processes).
    assert all(s["parent_id"] in by_id for s in spans if s is not accept), [
        s["name"] for s in spans if s is not accept and s["parent_id"] not in by_id]
    [job_span] = [s for s in spans if s["name"] == "raygrade.job"]
    assert job_span["attributes"]["raygrade.job.outcome"] == "succeeded"
    assert job_span["attributes"]["raygrade.job.started_by"] in ("submit", "poll")


def test_a_job_without_traceparent_records_nothing(fake_app, fake):
    before = {s["context"]["span_id"] for s in read_span_files(span_files())}
    r = httpx.post(f"{fake_app}/v1/jobs", json=job(1), timeout=30)
    assert r.status_code == 202, r.text
    assert Client(fake_app).wait(r.json()["id"], timeout_s=60, poll_s=0.2, progress=False).state.value == "succeeded"
    new = [s for s in read_span_files(span_files()) if s["context"]["span_id"] not in before]
    assert not [s for s in new if s["attributes"].get("raygrade.job_id") == r.json()["id"]]


def test_a_status_read_goes_to_the_store_from_the_ingress_not_through_the_registry(fake_app, fake):
    """The default deployment (SQLite; the ingress on the head node beside the file): a traced
    ``GET /v1/jobs/{id}`` is read by the ingress itself, with no store call in the registry."""
    r = httpx.post(f"{fake_app}/v1/jobs", json=job(1), timeout=30)
    assert r.status_code == 202, r.text
    trace_id = secrets.token_hex(16)
    got = httpx.get(f"{fake_app}/v1/jobs/{r.json()['id']}",
                    headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}, timeout=30)
    assert got.status_code == 200 and got.json()["id"] == r.json()["id"], got.text
    deadline, spans = time.monotonic() + 30, []
    while time.monotonic() < deadline and not spans:
        spans = [s for s in read_span_files(span_files())
                 if s["context"]["trace_id"] == f"0x{trace_id}" and s["name"].startswith("raygrade.")]
        time.sleep(0.2)
    assert [(s["name"], s["attributes"]["raygrade.read.direct"]) for s in spans] == [
        ("raygrade.ingress_read status", True)], spans
