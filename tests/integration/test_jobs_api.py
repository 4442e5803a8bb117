"""Job lifecycle over HTTP: signed completion webhooks with retries, cancellation, webhook
validation. The webhook receiver is a real HTTP server on 127.0.0.1."""

import base64
import hashlib
import hmac
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from raygrade.cli import Client
from raygrade.protocol import GradingJob
from raygrade.store import JobStore
from raygrade.webhooks import verify


def job(n: int, **options) -> dict:
    return {"assessment": {"questions": [{"id": "q", "prompt": "Name a TCP header field.", "max_score": 2}]},
            "submissions": [{"student_id": f"s{i}", "pages": [{"type": "text", "text": f"answer {i}"}]}
                            for i in range(n)], "options": options}


class Receiver:
    """Answers 500 to the first ``fail_first`` deliveries, then 200; keeps every delivery."""

    def __init__(self, fail_first: int = 1):
        self.deliveries: list[tuple[dict, bytes, int]] = []
        self.got = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                code = 500 if len(outer.deliveries) < fail_first else 200
                outer.deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body, code))
                self.send_response(code)
                self.end_headers()
                if code == 200:
                    outer.got.set()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/raygrade"

    def stop(self):
        self.server.shutdown()


def test_completion_webhook_is_signed_and_retried(fake_app, fake):
    rx = Receiver(fail_first=1)
    try:
        r = httpx.post(f"{fake_app}/v1/jobs", json=job(3, webhook_url=rx.url), timeout=30)
        assert r.status_code == 202, r.text
        assert rx.got.wait(60), "webhook not delivered"
    finally:
        rx.stop()
    (h1, b1, c1), (h2, b2, c2) = rx.deliveries[:2]
    assert (c1, c2) == (500, 200) and h1["webhook-id"] == h2["webhook-id"] == f"msg_{r.json()['id']}"
    secret = os.environ["RAYGRADE_WEBHOOK_SECRET"]
    assert verify(secret, h2, b2) and not verify(secret, h2, b2 + b" ") and not verify("whsec_b3RoZXI=", h2, b2)
    # the specification's formula, by hand: base64(HMAC-SHA256(base64-decoded key, "id.timestamp.body"))
    mac = hmac.new(base64.b64decode(secret.removeprefix("whsec_")),
                   f"{h2['webhook-id']}.{h2['webhook-timestamp']}.".encode() + b2, hashlib.sha256).digest()
    assert h2["webhook-signature"] == "v1," + base64.b64encode(mac).decode()
    event = json.loads(b2)
    assert event["type"] == "grading.job.completed" and event["data"]["state"] == "succeeded"
    assert event["data"]["progress"]["items_graded"] == 3


def test_cancel_a_running_job(fake_app, fake, fake_store_url):
    # Every request takes 3 s: the job is surely running when cancelled. The store is opened
    # before the job is sent: opening it (migrations checked) took seconds on a loaded machine,
    # long enough for a 2-s job to finish unseen (2026-12-06).
    store = JobStore(fake_store_url)  # the app's SQLite file
    fake.latency_s = 3.0
    try:
        client = Client(fake_app)
        st = client.submit(GradingJob.model_validate(job(40)))
        deadline = time.monotonic() + 30
        while not any(b["state"] == "leased" for b in store.batch_report(st.id)):
            assert time.monotonic() < deadline, "no batch was dispatched"
            time.sleep(0.05)
        r = httpx.post(f"{fake_app}/v1/jobs/{st.id}/cancel", timeout=30)
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
        cancelled = r.json()["progress"]
        assert cancelled["items_cancelled"] + cancelled["items_graded"] == 40 and cancelled["items_cancelled"] > 0
        again = httpx.post(f"{fake_app}/v1/jobs/{st.id}/cancel", timeout=30)
        assert again.status_code == 409 and again.json()["error"]["type"] == "illegal_state_transition"
        # Batches in flight when the job was cancelled finish without writing grades.
        deadline, seen = time.monotonic() + 15, -1
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if len(fake.log) == seen and fake.log:
                break
            seen = len(fake.log)
        assert fake.log, "no request was in flight"
        assert client.status(st.id).progress.items_graded == cancelled["items_graded"]
        res = client.results(st.id)
        assert res.state.value == "cancelled" and {e.type for e in res.errors} == {"cancelled"}
    finally:
        fake.latency_s = 0.02
        store.close()


@pytest.mark.parametrize("url", [
    "http://10.0.0.1/hook", "http://167772161/hook",  # a private address, and the same as a number
    "http://169.254.169.254/latest/meta-data", "http://[fd00::1]/hook", "http://192.168.1.1/hook",
    "http://user:pass@127.0.0.1:9/hook", "http://[::1", "http://127.0.0.1:9/a\r\nX-Evil: 1", "gopher://127.0.0.1/",
])
def test_webhooks_cannot_be_aimed_inward(fake_app, fake, url):
    """Refused at submission (400 naming the field, nothing stored): the app allows only loopback (its
    test receivers), so private, link-local and metadata addresses, numeric forms, credentials,
    unparseable URLs and other schemes are all refused."""
    r = httpx.post(f"{fake_app}/v1/jobs", json=job(1, webhook_url=url), timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "options.webhook_url"


def test_webhooks_need_a_secret_and_a_http_url(fake_app, fake):
    r = httpx.post(f"{fake_app}/v1/jobs", json=job(1, webhook_url="ftp://example.org/x"), timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "options.webhook_url"
    missing = httpx.post(f"{fake_app}/v1/jobs/job_nope/cancel", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


def test_a_reviewed_webhook_follows_the_last_review(fake_app, fake):
    """``grading.job.reviewed`` is delivered, signed, once the job's review queue is empty."""
    rx = Receiver(fail_first=0)
    try:
        client = Client(fake_app)
        st = client.submit(job(4, webhook_url=rx.url, review_share=0.5))
        assert client.wait(st.id, timeout_s=60, poll_s=0.2).state.value == "succeeded"
        assert rx.got.wait(30), "completion webhook not delivered"
        rx.got.clear()
        for item in client.reviews(job_id=st.id, status="pending").data:
            client.review(st.id, item.id, 1)
        assert rx.got.wait(30), "reviewed webhook not delivered"
    finally:
        rx.stop()
    events = [json.loads(b) for _, b, code in rx.deliveries if code == 200]
    assert [e["type"] for e in events] == ["grading.job.completed", "grading.job.reviewed"]
    headers, body, _ = rx.deliveries[-1]
    assert headers["webhook-id"] == f"msg_{st.id}_reviewed" and verify(os.environ["RAYGRADE_WEBHOOK_SECRET"],
                                                                       headers, body)
    assert events[1]["data"]["progress"]["items_reviewed"] == 2


def test_one_student_jobs_that_allow_it_share_a_provider_request(fake_app, fake):
    """Three one-student jobs with ``batch_across_jobs`` POSTed together share provider requests (all
    three in one, or two in one when a POST reaches the batcher after the others' wait of
    ``share_wait_s``: a CI run beside a CPU vLLM engine saw that); each job has its own grade,
    usage and completion."""
    with ThreadPoolExecutor(3) as pool:
        posted = list(pool.map(lambda _: httpx.post(f"{fake_app}/v1/jobs", json=job(1, batch_across_jobs=True),
                                                    timeout=30), range(3)))
    assert [r.status_code for r in posted] == [202] * 3, [r.text for r in posted]
    client = Client(fake_app)
    finals = [client.wait(r.json()["id"], timeout_s=60, poll_s=0.2, progress=False) for r in posted]
    assert [f.state.value for f in finals] == ["succeeded"] * 3
    answered = [rec for rec in fake.log if rec.status == 200]
    assert sorted(len(rec.items) for rec in answered) in ([3], [1, 2]), fake.log  # students renamed s1.. per request
    for f in finals:
        res = client.results(f.id)
        assert [(r.student_id, r.question_id) for r in res.results] == [("s0", "q")]
        assert f.usage.prompt_tokens > 0
    assert sum(f.usage.prompt_tokens for f in finals) == sum(rec.prompt_tokens for rec in answered)
