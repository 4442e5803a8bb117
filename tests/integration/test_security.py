"""The API as an attacker meets it, on an application with API keys on (as shipped): tenants,
bounded and stalled requests, hostile pages and webhook URLs, and a schemathesis run with a key.

Everything talks to 127.0.0.1 only; every load is bounded in count and time.
"""

import base64
import io
import itertools
import selectors
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from urllib.parse import urlsplit

import httpx
import pytest

# Imported at collection, not first inside the schemathesis test: compiling its modules (pytest
# rewrites them: it is a plugin) deep in a test's stack once raised CPython 3.11's "AST constructor
# recursion depth mismatch" SystemError in a CI run.
import schemathesis.specs.openapi.schemas  # noqa: F401
from PIL import Image
from test_jobs_api import Receiver, job

from raygrade.client import Client
from raygrade.config import ApiConfig, BatcherConfig, RaygradeArgs, StoreConfig
from raygrade.errors import AuthenticationError, NotFoundError, QuotaExceededError
from raygrade.protocol import GradingJob, TenantQuota
from raygrade.store import JobStore
from raygrade.testing.fake_openai import fake_provider_config

IDLE_S = 10.0  # the app's body_idle_timeout_s
LIMIT = 2 * 1024 * 1024  # the app's max_body_bytes


@pytest.fixture(scope="module")
def secure(serve_url, fake_openai, tmp_path_factory):
    """The app with API keys required, its own store, two tenants with one key each."""
    from ray import serve

    from raygrade.app import build_app

    home = tmp_path_factory.mktemp("secure")
    store_cfg = StoreConfig(url=f"sqlite:///{home}/jobs.db")
    args = RaygradeArgs(provider=fake_provider_config(fake_openai.base_url, timeout_s=6.0), store=store_cfg,
                        api=ApiConfig(max_body_bytes=LIMIT, body_idle_timeout_s=IDLE_S, body_timeout_s=30,
                                      key_cache_s=0),
                        batcher=BatcherConfig(max_students_per_request=4, max_images_per_request=6),
                        namespace=f"rg-sec-{uuid.uuid4().hex[:8]}")
    serve.run(build_app(args), name="secure", route_prefix="/secure")
    store = JobStore(store_cfg.url, blob_uri=str(home / "blobs"))  # the operator's side: `raygrade keys`
    keys = {t: store.create_key(t)[1] for t in ("school-a", "school-b")}
    yield SimpleNamespace(url=f"{serve_url}/secure", keys=keys, store=store)
    store.close()
    serve.delete("secure")


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_tenants_see_only_their_own_jobs(secure, fake):
    a = Client(secure.url, api_key=secure.keys["school-a"])
    b = Client(secure.url, api_key=secure.keys["school-b"])
    ja = a.submit(job(2), idempotency_key="term-1")
    jb = b.submit(job(3), idempotency_key="term-1")  # the same key, another tenant: another job
    assert ja.id != jb.id and a.submit(job(2), idempotency_key="term-1").id == ja.id
    for call in (b.status, b.results, b.cancel, b.replicas):
        with pytest.raises(NotFoundError):
            call(ja.id)
    assert a.wait(ja.id, timeout_s=60, poll_s=0.2, progress=False).state.value == "succeeded"
    extra = [a.submit(job(1)).id for _ in range(3)]
    page1 = a.list_jobs(limit=2)
    page2 = a.list_jobs(limit=2, after=page1.last_id)
    assert [j.id for j in page1.data + page2.data] == extra[::-1] + [ja.id] and page1.has_more
    assert not page2.has_more and jb.id not in {j.id for j in a.list_jobs(limit=100).data}
    assert [j.id for j in a.list_jobs(status="succeeded", limit=100).data][-1] == ja.id
    with pytest.raises(NotFoundError):
        a.list_jobs(after=jb.id)  # another tenant's job is no cursor


def test_no_key_bad_key_and_revoked_key_are_401_before_the_body_is_read(secure):
    info, key = secure.store.create_key("school-c")
    assert Client(secure.url, api_key=key).list_jobs().data == []
    secure.store.revoke_key(info.id)
    with pytest.raises(AuthenticationError):  # key_cache_s=0: refused at once
        Client(secure.url, api_key=key).list_jobs()
    for headers in ({}, {"Authorization": "Bearer rg_nope"}, {"Authorization": "Token x"}):
        for method, path in (("GET", "/v1/jobs"), ("GET", "/v1/jobs/job_x"), ("POST", "/v1/jobs/job_x/cancel"),
                             ("GET", "/openapi.json"), ("GET", "/docs")):
            r = httpx.request(method, f"{secure.url}{path}", headers=headers, timeout=10)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", (path, r.text)
    # A body that would be refused for its size is refused for the missing key first, unread.
    status, _ = _raw_post(secure.url, "/v1/jobs", {}, declared=LIMIT * 10, send=b"{")
    assert status == 401
    assert httpx.get(f"{secure.url}/healthz", timeout=10).status_code == 200
    ready = httpx.get(f"{secure.url}/readyz", timeout=10)  # probes carry no key
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


def _raw_post(url: str, path: str, headers: dict[str, str], *, declared: int, send: bytes, timeout_s: float = 10.0):
    """POST by hand: declare ``declared`` bytes, send ``send``, read the answer (status, seconds)."""
    u = urlsplit(url)
    t0 = time.monotonic()
    with socket.create_connection((u.hostname, u.port), timeout=timeout_s) as s:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        s.sendall(f"POST {u.path}{path} HTTP/1.1\r\nHost: {u.hostname}\r\nContent-Type: application/json\r\n"
                  f"{head}Content-Length: {declared}\r\n\r\n".encode() + send)
        answer = s.recv(4096).decode("latin-1")
    return int(answer.split(" ", 2)[1]), time.monotonic() - t0


def test_bodies_over_the_limit_are_413_and_stalled_bodies_408(secure):
    key = _auth(secure.keys["school-a"])
    status, took = _raw_post(secure.url, "/v1/jobs", key, declared=LIMIT + 1, send=b"{")
    assert status == 413 and took < IDLE_S  # from Content-Length, without waiting for the body
    big = job(1)
    big["submissions"][0]["pages"][0]["text"] = "x" * 150_000
    big["submissions"] *= 1
    big["submissions"] = [dict(big["submissions"][0], student_id=f"s{i}") for i in range(15)]  # ~2.25 MB
    chunks = (c for c in [httpx.Request("POST", "/", json=big).content[i:i + 65536]
                          for i in range(0, 2_400_000, 65536)] if c)
    r = httpx.post(f"{secure.url}/v1/jobs", content=chunks, headers=key, timeout=30)  # chunked: no Content-Length
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
    status, took = _raw_post(secure.url, "/v1/jobs", key, declared=100_000, send=b'{"assess',
                             timeout_s=IDLE_S + 20)
    assert status == 408 and IDLE_S - 0.5 < took < IDLE_S + 15


def test_250_stalled_uploads_do_not_stop_health_or_jobs(secure, fake):
    """Each connection declares 100 kB and sends 5 bytes. While they all still hang (none answered or
    closed yet), /healthz and a valid job are answered; the guard then closes every one of them (408).

    The check is the order of events, not a wall-clock bound: an app whose health or job route waited
    on the stalled uploads would answer only after the guard had closed them."""
    u = urlsplit(secure.url)
    key = secure.keys["school-a"]
    socks = []
    try:
        for _ in range(250):
            s = socket.create_connection((u.hostname, u.port), timeout=IDLE_S + 30)
            s.sendall(f"POST {u.path}/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                      "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"ass".encode())
            socks.append(s)
        t0 = time.monotonic()
        assert httpx.get(f"{secure.url}/healthz", timeout=IDLE_S).status_code == 200
        health_s = time.monotonic() - t0
        t0 = time.monotonic()
        r = httpx.post(f"{secure.url}/v1/jobs", json=job(2), headers=_auth(key), timeout=IDLE_S)
        job_s = time.monotonic() - t0
        assert r.status_code == 202, r.text
        with selectors.DefaultSelector() as sel:  # epoll: no FD_SETSIZE limit
            for s in socks:
                sel.register(s, selectors.EVENT_READ)
            answered = len(sel.select(timeout=0))
        assert answered == 0, f"{answered} stalled uploads were answered before /healthz and the job"
        print(f"with 250 stalled uploads: /healthz {health_s:.3f} s, POST /v1/jobs {job_s:.3f} s")

        def answer(s):
            try:
                return s.recv(64).decode("latin-1").split(" ", 2)[1]
            except (OSError, IndexError):
                return "closed"

        with ThreadPoolExecutor(32) as pool:
            statuses = list(pool.map(answer, socks))
        assert statuses.count("408") == 250, {x: statuses.count(x) for x in set(statuses)}
    finally:
        for s in socks:
            s.close()


def test_headers_and_paths_are_bounded(secure):
    key = _auth(secure.keys["school-a"])
    r = httpx.post(f"{secure.url}/v1/jobs", json=job(1), headers={**key, "Idempotency-Key": "k" * 10_000}, timeout=10)
    assert r.status_code == 400 and "Idempotency-Key" in r.json()["error"]["param"], r.text
    r = httpx.get(f"{secure.url}/v1/jobs/{'j' * 500}", headers=key, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{secure.url}/v1/jobs", content=b'{"assessment": ', headers={**key, "content-type":
                                                                               "application/json"}, timeout=10)
    assert r.status_code == 400 and "error" in r.json()  # FastAPI's own JSON error, in raygrade's body


def _png(w: int, h: int, mode: str = "RGB") -> str:
    buf = io.BytesIO()
    Image.new(mode, (w, h)).save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("where", ["page", "model_answer"])
@pytest.mark.parametrize("data,needle", [
    (_png(30_000, 30_000, "1"), "pixels"),  # ~110 kB that decodes to 900 M pixels
    (base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 16).decode(), "cannot be read"),
])
def test_bombs_and_corrupt_pages_are_400s_naming_the_page(secure, where, data, needle):
    body = job(3)
    body["submissions"][1]["pages"].append({"type": "image", "data": data})
    if where == "model_answer":
        body = job(3)
        body["assessment"]["questions"][0]["model_answer_images"] = [{"type": "image", "data": data}]
    r = httpx.post(f"{secure.url}/v1/jobs", json=body, headers=_auth(secure.keys["school-a"]), timeout=60)
    assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text
    assert r.json()["error"]["param"] == ("submissions[1].pages[1].data" if where == "page"
                                          else "assessment.questions[0].model_answer_images[0].data")


def test_a_job_of_many_small_huge_pixel_pages_is_refused_from_their_headers(fake_app):
    """The probe's job (small files of 8000×8000 bilevel pages, 64 M pixels each): past
    ``api.max_request_pixels`` (5·10⁹) in all, it is a 400 before a page is decoded, and the app
    answers the next job as before."""
    from support.scan_files import tagged_png

    huge = io.BytesIO()
    Image.new("1", (8000, 8000), 1).save(huge, format="PNG")
    body = job(80)  # 80 × 64 M = 5.12·10⁹ pixels in ≈ 2.5 MB of base64
    for i, sub in enumerate(body["submissions"]):
        sub["pages"] = [{"type": "image", "data": base64.b64encode(tagged_png(huge.getvalue(), i)).decode()}]
    r = httpx.post(f"{fake_app}/v1/jobs", json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "api.max_request_pixels", r.text
    assert "counted from their headers" in r.json()["error"]["message"]
    assert httpx.post(f"{fake_app}/v1/jobs", json=job(1), timeout=60).status_code == 202


def test_a_tenants_quota_is_a_429_with_retry_after_and_its_usage_is_readable(secure, fake):
    """Over its items-per-day quota a tenant gets OpenAI's ``insufficient_quota`` 429 with
    ``Retry-After``, before its pages are even decoded; a replay of an accepted job still answers;
    ``GET /v1/usage`` shows what counts; other tenants are not affected."""
    _, key = secure.store.create_key("school-q")
    secure.store.set_quota("school-q", TenantQuota(items_per_day=5))
    client = Client(secure.url, api_key=key)
    first = client.submit(job(3), idempotency_key="q-1")
    over = job(3)
    corrupt = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 16).decode()  # a 400 once decoded
    over["submissions"][0]["pages"].append({"type": "image", "data": corrupt})
    r = httpx.post(f"{secure.url}/v1/jobs", json=over, headers=_auth(key), timeout=30)
    assert r.status_code == 429, r.text  # not the 400 the unreadable page would get: refused before decoding
    assert r.json()["error"]["type"] == "insufficient_quota" and r.json()["error"]["code"] == "items_per_day"
    assert 86_000 < int(r.headers["Retry-After"]) <= 86_400
    with pytest.raises(QuotaExceededError) as refused:
        client.submit(job(3))
    assert refused.value.http_status == 429 and 86_000 < refused.value.retry_after_s <= 86_400
    assert client.submit(job(3), idempotency_key="q-1").id == first.id  # a replay is never refused
    usage = client.usage()
    assert (usage.tenant, usage.items, usage.quota.items_per_day, usage.active_jobs >= 0) == ("school-q", 3, 5, True)
    assert Client(secure.url, api_key=secure.keys["school-a"]).usage().quota is None
    secure.store.set_quota("school-q", TenantQuota(max_active_jobs=0))
    r = httpx.post(f"{secure.url}/v1/jobs", json=job(1), headers=_auth(key), timeout=30)
    assert r.status_code == 429 and "Retry-After" not in r.headers and r.json()["error"]["code"] == "max_active_jobs"


def test_webhooks_to_loopback_in_every_form_are_refused_and_nothing_is_delivered(secure, fake):
    """This app has no allow-list: a receiver on 127.0.0.1 is an internal address however it is
    written, and it is never called."""
    rx = Receiver(fail_first=0)
    port = rx.server.server_address[1]
    try:
        forms = [f"http://127.0.0.1:{port}/h", f"http://2130706433:{port}/h", f"http://0x7f.1:{port}/h",
                 f"http://127.1:{port}/h", f"http://localhost:{port}/h", f"http://[::1]:{port}/h",
                 f"http://[::ffff:127.0.0.1]:{port}/h", f"http://user:pass@127.0.0.1:{port}/h",
                 f"http://[::1:{port}/h", f"http://127.0.0.1:{port}/h\r\nX: 1", f"https://0.0.0.0:{port}/h"]
        for url in forms:
            r = httpx.post(f"{secure.url}/v1/jobs", json=job(1, webhook_url=url),
                           headers=_auth(secure.keys["school-a"]), timeout=30)
            assert r.status_code == 400 and r.json()["error"]["param"] == "options.webhook_url", (url, r.text)
        assert rx.deliveries == []
    finally:
        rx.stop()


def test_schemathesis_with_a_key_finds_no_5xx_and_nothing_undocumented(secure, fake):
    """Property-based requests from the API's own OpenAPI document (fetched with the key), bounded
    in examples; every answer is < 500 and conforms to the document (status codes, schemas)."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    headers = _auth(secure.keys["school-b"])
    schema = schemathesis.openapi.from_url(f"{secure.url}/openapi.json", headers=headers)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    tried = []

    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    for op, mode in itertools.product(list(schema.get_all_operations()), modes):
        operation = op.ok()

        @settings(max_examples=10, deadline=None, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy(mode))
        def run(case):
            response = case.call(base_url=secure.url, headers=headers, timeout=30)
            tried.append((case.method, case.path, response.status_code))
            case.validate_response(response, checks=checks)

        try:
            run()
        except Unsatisfiable:  # no parameter to make invalid (GET /healthz)
            assert mode is schemathesis.GenerationMode.NEGATIVE
    assert len(tried) >= 80 and all(code < 500 for _, _, code in tried)
    assert {200, 400, 401, 404} <= {code for _, _, code in tried}  # valid, invalid and unauthenticated cases ran


def test_reviews_are_the_tenants_own_keep_the_reviewers_key_and_export_as_csv(secure, fake):
    """The review loop over HTTP with keys on: the queue, a teacher's score on the grid (400 off
    it, 404 for another tenant), the page a reviewer reads, final and model scores in the results
    and in the CSV export, and the reviewing key's id (never the key) in the audit trail."""
    import csv

    a = Client(secure.url, api_key=secure.keys["school-a"])
    b = Client(secure.url, api_key=secure.keys["school-b"])
    png = io.BytesIO()
    Image.new("RGB", (64, 48), "white").save(png, format="PNG")
    body = job(4, review_share=0.5)
    body["assessment"]["questions"][0]["score_step"] = 0.5
    body["submissions"][0]["pages"].insert(0, {"type": "image", "data": base64.b64encode(png.getvalue()).decode()})
    st = a.submit(body)
    assert a.wait(st.id, timeout_s=60, poll_s=0.2).state.value == "succeeded"

    pending = a.reviews(job_id=st.id, status="pending")
    assert len(pending.data) == 2 and not pending.has_more
    assert b.reviews().data == [] and b.reviews(status="pending").data == []
    with pytest.raises(NotFoundError):
        b.reviews(job_id=st.id)
    item = pending.data[0]
    r = httpx.get(f"{secure.url}{item.page_urls[0]}", headers=_auth(secure.keys["school-a"]), timeout=10)
    assert r.status_code == 200 and r.headers["x-content-type-options"] == "nosniff"
    if item.student_id == "s0":
        assert r.headers["content-type"] == "image/png" and r.content == png.getvalue()
    else:
        assert r.headers["content-type"].startswith("text/plain") and r.text.startswith("answer")
    assert httpx.get(f"{secure.url}{item.page_urls[0]}", headers=_auth(secure.keys["school-b"]),
                     timeout=10).status_code == 404

    off = httpx.post(f"{secure.url}/v1/jobs/{st.id}/items/{item.id}/review", json={"score": 0.7},
                     headers=_auth(secure.keys["school-a"]), timeout=10)
    assert off.status_code == 400 and off.json()["error"]["param"] == "score"
    assert httpx.post(f"{secure.url}/v1/jobs/{st.id}/items/{item.id}/review", json={"score": 1},
                      headers=_auth(secure.keys["school-b"]), timeout=10).status_code == 404
    bad_id = httpx.post(f"{secure.url}/v1/jobs/{st.id}/items/7/review", json={"score": 1},
                        headers=_auth(secure.keys["school-a"]), timeout=10)
    assert bad_id.status_code == 400 and bad_id.json()["error"]["param"] == "path.item_id"

    model_score = item.model_score
    teacher = 2.0 if model_score != 2.0 else 0.5
    done = a.review(st.id, item.id, teacher, comment="=cmd|' /C calc'!A0")   # hostile comment: a formula
    assert done.status == "done" and done.graded_by == "teacher" and done.score == teacher
    key_id = next(k.id for k in secure.store.list_keys("school-a"))
    assert done.review.reviewed_by == key_id and secure.keys["school-a"] not in done.model_dump_json()
    assert a.review(st.id, item.id, teacher, comment="=cmd|' /C calc'!A0").review.revisions == 1  # a retry
    assert a.status(st.id).progress.items_reviewed == 1
    assert [i.id for i in a.reviews(job_id=st.id, status="done").data] == [item.id]

    res = {x.item_id: x for x in a.results(st.id).results}
    assert res[item.id].score == teacher and res[item.id].model_score == model_score
    assert sum(x.graded_by == "teacher" for x in res.values()) == 1
    rows = list(csv.DictReader(io.StringIO(a.results_csv(st.id))))
    assert len(rows) == 4 and {r["student_id"] for r in rows} == {"s0", "s1", "s2", "s3"}
    row = next(r for r in rows if r["student_id"] == item.student_id)
    assert (float(row["score"]), float(row["model_score"]), row["graded_by"], row["reviewed_by"]) == (
        teacher, model_score, "teacher", key_id)
    assert row["review_comment"].startswith("'=")   # not a formula in a spreadsheet

    # The question is regraded with the review as an example; its grades replace the model's
    # (the reviewed item keeps the teacher's score), and asking again returns the same regrade.
    with pytest.raises(NotFoundError):
        b.regrade(st.id, "q")
    child = a.regrade(st.id, "q")
    assert child.regrade_of == st.id and child.progress.items_total == 3
    again = httpx.post(f"{secure.url}/v1/jobs/{st.id}/regrade", params={"question_id": "q"},
                       headers=_auth(secure.keys["school-a"]), timeout=10)
    assert again.status_code == 200 and again.json()["id"] == child.id
    assert a.wait(child.id, timeout_s=60, poll_s=0.2).state.value == "succeeded"
    regraded = {x.item_id: x for x in a.results(st.id).results}
    assert regraded[item.id].score == teacher and regraded[item.id].graded_by == "teacher"
    child_results = {x.student_id: x for x in a.results(child.id).results}
    for x in regraded.values():
        if x.item_id != item.id:
            assert x.batch_id == child_results[x.student_id].batch_id   # the regrade's grade, not the first one


def test_a_tenants_file_bytes_quota_refuses_an_upload_before_it_is_stored(secure, fake):
    """Over its ``file_bytes`` quota an upload is OpenAI's ``insufficient_quota`` 429 naming the
    quota, nothing of it recorded; ``GET /v1/usage`` shows the stored bytes; a deletion makes room."""
    from support import scan_files

    _, key = secure.store.create_key("school-f")
    pdf = scan_files.vector_pdf(1)
    secure.store.set_quota("school-f", TenantQuota(file_bytes=len(pdf) + 10))
    client = Client(secure.url, api_key=key)
    first = client.files.create(pdf, filename="one.pdf")
    r = httpx.post(f"{secure.url}/v1/files", files={"file": ("two.pdf", pdf)}, data={"purpose": "pages"},
                   headers=_auth(key), timeout=30)
    assert r.status_code == 429 and "Retry-After" not in r.headers, r.text
    assert (r.json()["error"]["type"], r.json()["error"]["code"]) == ("insufficient_quota", "file_bytes")
    usage = client.usage()
    assert (usage.files, usage.file_bytes, usage.quota.file_bytes) == (1, len(pdf), len(pdf) + 10)
    assert [f.id for f in client.files.list().data] == [first.id]
    client.files.delete(first.id)
    assert client.files.create(pdf, filename="two.pdf").bytes == len(pdf)


def test_files_are_uploaded_once_named_in_jobs_and_are_their_tenants_own(secure, fake):
    """The Files API over HTTP: a 3-page PDF uploaded as multipart (the client streams it), a job
    whose student is its pages 3 and 1 graded with those page images (read back per item); another
    tenant cannot read, delete, list or name the file; bad uploads are 400s naming the file or the
    field, one over the body limit a 413; a deleted file's pages stay in the job that used them."""
    from support import scan_files

    from raygrade.errors import InvalidRequestError
    from raygrade.scans import page_images as scan_pages

    a = Client(secure.url, api_key=secure.keys["school-a"])
    b = Client(secure.url, api_key=secure.keys["school-b"])
    pdf = scan_files.vector_pdf(3)
    f = a.files.create(pdf, filename="../class 7b.pdf")
    assert (f.pages, f.bytes, f.filename, f.media_type) == (3, len(pdf), "class 7b.pdf", "application/pdf")
    assert a.files.retrieve(f.id) == f and a.files.content(f.id) == pdf and f.id in {x.id for x in a.files.list().data}
    for call in (b.files.retrieve, b.files.content, b.files.delete):
        with pytest.raises(NotFoundError):
            call(f.id)
    assert f.id not in {x.id for x in b.files.list(limit=100).data}
    named = job(1)
    named["submissions"][0]["pages"] = [{"type": "file", "file_id": f.id, "page": 3},
                                        {"type": "file", "file_id": f.id, "page": 1}]
    with pytest.raises(InvalidRequestError) as e:
        b.submit(named)
    assert e.value.param == "submissions[0].pages[0].file_id"

    replay_key = f"files-{uuid.uuid4().hex}"
    st = a.wait(a.submit(named, idempotency_key=replay_key).id, timeout_s=60, poll_s=0.2, progress=False)
    assert st.state.value == "succeeded" and st.usage.prompt_tokens > 0
    item = a.results(st.id).results[0].item_id
    shown = [httpx.get(f"{secure.url}/v1/jobs/{st.id}/items/{item}/pages/{k}", headers=_auth(secure.keys["school-a"]),
                       timeout=10) for k in (0, 1)]
    whole = secure.store.resolve_files(GradingJob.model_validate(
        dict(named, submissions=[{"student_id": "x", "pages": [{"type": "file", "file_id": f.id}]}])), "school-a")
    want = [secure.store.blobs.get(p.sha256) for p in whole.submissions[0].pages]
    assert [r.content for r in shown] == [want[2], want[0]] and want[0] != want[2]
    assert a.files.delete(f.id).deleted and a.status(st.id).state.value == "succeeded"
    with pytest.raises(InvalidRequestError):
        a.submit(named)
    # The same request again under its idempotency key: the job it made, though the file is gone.
    r = httpx.post(f"{secure.url}/v1/jobs", json=named, timeout=30,
                   headers={**_auth(secure.keys["school-a"]), "Idempotency-Key": replay_key})
    assert (r.status_code, r.json()["id"]) == (200, st.id), r.text
    with pytest.raises(InvalidRequestError):  # another request under that key still names the file
        a.submit(dict(named, options={"review_share": 0.5}), idempotency_key=replay_key)
    assert httpx.get(f"{secure.url}/v1/jobs/{st.id}/items/{item}/pages/0", headers=_auth(secure.keys["school-a"]),
                     timeout=10).content == want[2]

    # A class's scan: two students behind their QR cover sheets, split before grading, then graded.
    from raygrade.protocol import SplitByCoverSheets
    from raygrade.sheets import cover_sheets

    covers = [Image.open(io.BytesIO(p)).convert("L") for p in scan_pages(cover_sheets([("ada", None), ("bob", None)]))]
    stack = [covers[0], scan_files.page_image("ada: page 1"), scan_files.page_image("ada: page 2"), covers[1],
             scan_files.page_image("bob: page 1")]
    buf = io.BytesIO()
    stack[0].save(buf, format="PDF", save_all=True, append_images=stack[1:], resolution=150)
    scan = a.files.create(buf.getvalue(), filename="class.pdf")
    found = a.files.split(scan.id, SplitByCoverSheets())
    assert [(s.student_id, s.pages, s.cover_page) for s in found.students] == [("ada", [2, 3], 1), ("bob", [5], 4)]
    with pytest.raises(NotFoundError):
        b.files.split(scan.id, {"method": "cover_sheets"})
    with pytest.raises(InvalidRequestError) as e:
        a.files.split(scan.id, {"method": "pages", "pages_per_student": 2, "student_ids": ["ada", "bob"]})
    assert e.value.param == "pages_per_student"
    class_job = dict(job(1), submissions=found.submissions())
    st = a.wait(a.submit(class_job).id, timeout_s=60, poll_s=0.2, progress=False)
    assert st.state.value == "succeeded" and st.progress.items_graded == 2

    key = _auth(secure.keys["school-a"])
    for files, data, param, needle in (
            ({"file": ("a.gif", scan_files.gif())}, {"purpose": "pages"}, "file", "'a.gif' is a GIF file"),
            ({"file": ("locked.pdf", scan_files.encrypted_pdf())}, {"purpose": "pages"}, "file", "encrypted"),
            ({"file": ("p.pdf", pdf)}, {"purpose": "fine-tune"}, "purpose", ""),
            ({}, {"purpose": "pages"}, "file", "")):
        r = httpx.post(f"{secure.url}/v1/files", files=files, data=data, headers=key, timeout=30)
        err = r.json()["error"]
        assert r.status_code == 400 and err["param"] == param and needle in err["message"], r.text
    with pytest.raises(InvalidRequestError) as e:
        a.files.create(b"%PDF-" + bytes(LIMIT), filename="huge.pdf")
    assert (e.value.http_status, e.value.code) == (413, "request_too_large")


def test_a_flood_of_made_up_keys_gets_429s_that_cost_the_store_nothing(secure):
    """Last in this module: it spends loopback's budget of failed look-ups (``failed_auth_burst``
    20, ``failed_auth_per_min`` 30, the defaults). Beyond the burst a made-up key is a 429 with
    ``Retry-After`` and an OpenAI-shaped body; a key repeated is answered from memory (401); once
    the budget refills a valid key from the same client works again."""
    answers = []
    with httpx.Client(timeout=10) as http:
        for i in range(40):
            r = http.get(f"{secure.url}/v1/jobs", headers=_auth(f"rg_made_up_{i}_{uuid.uuid4().hex}"))
            answers.append((r.status_code, r.headers.get("retry-after"), r.json()["error"]))
        refused = [a for a in answers if a[0] == 429]
        assert {a[0] for a in answers} == {401, 429} and len(refused) >= 19, [a[0] for a in answers]
        assert all(a[0] == 401 for a in answers[:19]), "the burst is looked up"
        status, retry_after, error = refused[-1]
        assert error["type"] == "rate_limit_error" and error["code"] == "too_many_failed_authentications"
        assert retry_after is not None and 1 <= int(retry_after) <= 3
        again = http.get(f"{secure.url}/v1/jobs", headers=_auth("rg_made_up_0_x"))
        assert again.status_code in (401, 429)
        deadline = time.monotonic() + 15
        while (r := http.get(f"{secure.url}/v1/jobs", headers=_auth(secure.keys["school-a"]))).status_code == 429:
            assert time.monotonic() < deadline, r.text
            time.sleep(float(r.headers["retry-after"]))
        assert r.status_code == 200, r.text
