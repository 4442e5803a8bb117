"""A full job through HTTP → ingress → batcher → token bucket → grader replicas → fake provider."""

import base64
import io

import httpx
from PIL import Image

from raygrade.cli import Client
from raygrade.protocol import GradingJob


def png(w=600, h=400) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), "white").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def make_job(n_students=9, pages=(1, 3, 2), oversize=False, idem=None) -> GradingJob:
    subs = []
    for i in range(n_students):
        k = pages[i % len(pages)]
        subs.append({"student_id": f"st-{i}", "pages": [{"type": "image", "data": png()} for _ in range(k)]})
    subs.append({"student_id": "typed", "pages": [{"type": "text", "text": "TCP has sequence numbers."}],
                 "question_ids": ["q1"]})
    if oversize:  # more images than one request may carry (max_images_per_request=6)
        subs.append({"student_id": "huge", "pages": [{"type": "image", "data": png(64, 64)} for _ in range(8)]})
    return GradingJob.model_validate({
        "assessment": {"questions": [
            {"id": "q1", "prompt": "Name two TCP header fields.", "reference_answer": "Sequence number, ACK.",
             "max_score": 2, "score_step": 0.5},
            {"id": "q2", "prompt": "Why is UDP faster?", "rubric": "1 point: no handshake.", "max_score": 1}]},
        "submissions": subs, "options": {"idempotency_key": idem}})


def test_full_job_through_the_serve_graph(fake_app, fake):
    client = Client(fake_app)
    job = make_job(oversize=True)
    job.options.review_share = 0.25
    st = client.submit(job)
    assert st.state.value in ("queued", "running")
    st = client.wait(st.id, timeout_s=120, poll_s=0.2, progress=False)
    res = client.results(st.id)

    # every student but the oversize one graded on each of their questions, exactly once
    expected = {(s.student_id, q.id) for s in job.submissions if s.student_id != "huge"
                for q in job.questions_for(s)}
    got = [(r.student_id, r.question_id) for r in res.results]
    assert sorted(got) == sorted(expected)
    assert st.state.value == "partial"
    assert [(e.type, e.student_ids) for e in res.errors] == [("planning_error", ["huge"])]
    assert "images" in res.errors[0].message

    for r in res.results:
        assert 0 <= r.score <= r.max_score and 0 <= r.confidence <= 1 and r.feedback
        assert r.model == "fake-grader" and r.usage.total_tokens > 0
    pages = {r.student_id: r.pages for r in res.results}
    assert pages["st-1"] == [0, 1, 2] and pages["typed"] == [0]

    # requests went through the provider once per batch; usage adds up; several batches, not one per page
    p = st.progress
    assert p.items_total == len(expected) + 2 and p.items_graded == len(expected) and p.items_failed == 2
    assert p.batches_done == p.batches_total == len(fake.log) and 1 < p.batches_total < len(job.submissions)
    assert all(rec.status == 200 for rec in fake.log)
    assert st.usage.prompt_tokens == sum(rec.prompt_tokens for rec in fake.log)
    assert sum(client.replicas(st.id).values()) == p.batches_total
    flagged = [r for r in res.results if r.needs_review]
    assert len(flagged) == p.items_needs_review == -(-len(expected) // 4)  # ceil(25 %)


def test_validation_error_is_400_with_openai_body(fake_app):
    body = make_job(2).model_dump(mode="json")
    body["submissions"][0]["pages"][0]["data"] = "###"
    r = httpx.post(f"{fake_app}/v1/jobs", json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["param"].startswith("submissions[0].pages[0]") and "base64" in err["message"]
    assert "###" not in err["message"]


def test_a_body_that_is_not_json_is_400_naming_line_and_column(fake_app):
    r = httpx.post(f"{fake_app}/v1/jobs", content=b'{"assessment": {"questions": []},\n "submissions": [}',
                   headers={"Content-Type": "application/json"})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] is None and "line 2, column" in err["message"], err


def test_stored_image_pages_are_internal_only(fake_app):
    body = make_job(n_students=1).model_dump(mode="json")
    body["submissions"][0]["pages"] = [{"type": "stored_image", "sha256": "0" * 64, "media_type": "image/png",
                                        "width": 10, "height": 10, "size": 100}]
    r = httpx.post(f"{fake_app}/v1/jobs", json=body, timeout=30)
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "submissions[0].pages[0]" and "internal" in err["message"]


def test_unknown_job_is_404(fake_app):
    r = httpx.get(f"{fake_app}/v1/jobs/job_nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_idempotency_key_replays_and_conflicts(fake_app, fake):
    client = Client(fake_app)
    job = make_job(2, idem="key-123")
    first = client.submit(job)
    second = httpx.post(f"{fake_app}/v1/jobs", content=job.model_dump_json(),
                        headers={"content-type": "application/json"})
    assert second.status_code == 200 and second.json()["id"] == first.id
    other = make_job(3, idem="key-123")
    r = httpx.post(f"{fake_app}/v1/jobs", content=other.model_dump_json(), headers={"content-type": "application/json"})
    assert r.status_code == 409 and r.json()["error"]["param"] == "idempotency_key"
    st = client.wait(first.id, timeout_s=60, poll_s=0.2, progress=False)
    assert len(fake.log) == st.progress.batches_total  # graded once, not twice


def test_schema_invalid_output_is_retried_then_reported(fake_app, fake):
    client = Client(fake_app)
    one = GradingJob.model_validate({
        "assessment": {"questions": [{"id": "q", "prompt": "p", "max_score": 1}]},
        "submissions": [{"student_id": "a", "pages": [{"type": "text", "text": "x"}]}]})
    fake.script.extend(["malformed"])            # first answer is not JSON; the re-ask succeeds
    st = client.wait(client.submit(one).id, timeout_s=60, poll_s=0.2, progress=False)
    assert st.state.value == "succeeded" and len(fake.log) == 2

    fake.reset()
    fake.script.extend(["out_of_range"] * 3)     # every answer has a score above max_score
    st = client.wait(client.submit(one).id, timeout_s=60, poll_s=0.2, progress=False)
    res = client.results(st.id)
    assert st.state.value == "failed" and res.results == []
    assert res.errors[0].type == "output_parse_error" and "outside [0, 1]" in res.errors[0].message
    assert len(fake.log) == 3


def test_provider_429_is_retried_with_retry_after(fake_app, fake):
    client = Client(fake_app)
    one = make_job(1)
    fake.script.extend(["429"])
    st = client.wait(client.submit(one).id, timeout_s=60, poll_s=0.2, progress=False)
    assert st.state.value == "succeeded"
    assert [rec.status for rec in fake.log][:2] == [429, 200]


def test_page_files_as_schools_make_them_are_split_and_graded(fake_app, fake):
    """PDF (vector and scanned), a CCITT G4 TIFF, a rotated phone JPEG, HEIC and WebP, each a
    student's upload: split into page images when accepted, graded; what cannot be read is a 400."""
    from support import scan_files

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    files = {"vector-pdf": scan_files.vector_pdf(3), "scanned-pdf": scan_files.scanned_pdf(2),
             "g4-tiff": scan_files.g4_tiff(2), "phone-jpeg": scan_files.rotated_phone_jpeg(),
             "heic": scan_files.heic(), "webp": scan_files.webp()}
    body = {"assessment": {"questions": [{"id": "q1", "prompt": "Name a transport protocol.", "max_score": 1}]},
            "submissions": [{"student_id": sid, "pages": [{"type": "image", "data": b64(data)}]}
                            for sid, data in files.items()]}
    r = httpx.post(f"{fake_app}/v1/jobs", json=body, timeout=60)
    assert r.status_code == 202, r.text
    client = Client(fake_app)
    st = client.wait(r.json()["id"], timeout_s=120, poll_s=0.2, progress=False)
    res = client.results(st.id)
    assert st.state.value == "succeeded", [(e.type, e.message) for e in res.errors]
    pages = {x.student_id: x.pages for x in res.results}
    assert pages == {"vector-pdf": [0, 1, 2], "scanned-pdf": [0, 1], "g4-tiff": [0, 1], "phone-jpeg": [0],
                     "heic": [0], "webp": [0]}
    # The third page of the vector PDF is a page image of its own, as the review page shows it.
    item = next(x for x in res.results if x.student_id == "vector-pdf")
    page = httpx.get(f"{fake_app}/v1/jobs/{st.id}/items/{item.item_id}/pages/2", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"] in ("image/png", "image/jpeg")
    assert Image.open(io.BytesIO(page.content)).size[1] > 1600  # a US-letter page at 150 dpi
    assert httpx.get(f"{fake_app}/v1/jobs/{st.id}/items/{item.item_id}/pages/3", timeout=30).status_code == 404

    for data, param, needle in [(scan_files.encrypted_pdf(), "submissions[0].pages[0].data", "encrypted"),
                                (b"%PDF-1.4 broken", "submissions[0].pages[0].data", "not a readable PDF"),
                                (scan_files.gif(), "submissions[0].pages[0].image.data", "this is a GIF file")]:
        bad = {**body, "submissions": [{"student_id": "s", "pages": [{"type": "image", "data": b64(data)}]}]}
        r = httpx.post(f"{fake_app}/v1/jobs", json=bad, timeout=60)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and needle in err["message"] and err["param"] == param, err


def test_a_student_no_request_can_hold_is_refused_at_submission_naming_them(fake_app):
    """The fake provider's context is 16,000 tokens; 25 pages of 2048 × 2048 are 25 × 765 tokens by
    GPT-4o's image rule. The job is refused before anything is recorded (was: accepted, then that
    student's items failed in planning)."""
    def page(w, h):
        buf = io.BytesIO()
        Image.new("1", (w, h), 1).save(buf, format="PNG")
        return {"type": "image", "data": base64.b64encode(buf.getvalue()).decode()}

    body = make_job(n_students=1).model_dump(mode="json")
    body["submissions"].append({"student_id": "thick-file", "pages": [page(2048, 2048)] * 25})
    before = httpx.get(f"{fake_app}/v1/jobs", params={"limit": 100}, timeout=30).json()["data"]
    r = httpx.post(f"{fake_app}/v1/jobs", json=body, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "submissions[2].pages", err
    assert "student 'thick-file' needs" in err["message"] and "the context window is 16000" in err["message"], err
    after = httpx.get(f"{fake_app}/v1/jobs", params={"limit": 100}, timeout=30).json()["data"]
    assert [j["id"] for j in after] == [j["id"] for j in before], "nothing was recorded"
    body["submissions"][2]["pages"] = [page(2048, 2048)] * 8   # 8 × 765 fits
    assert httpx.post(f"{fake_app}/v1/jobs", json=body, timeout=60).status_code == 202


def test_a_grader_replica_reads_stored_pages_and_refuses_a_folder_on_another_node(fake_app, tmp_path):
    """Through Serve, as the batcher calls it: a Grader replica reads a batch's stored page images
    from the folder the caller names on its own node; for a folder on another node it raises
    PagesElsewhere (the batcher's cue to send the images itself), which crosses Serve as that type."""
    import asyncio
    import os

    import pytest
    import ray
    from ray import serve

    from raygrade.batch import GradeBatch
    from raygrade.blobs import BlobStore
    from raygrade.prompts import StudentWork
    from raygrade.protocol import Question, StoredImage
    from raygrade.serve.grader import PagesElsewhere, PagesFrom

    blobs = BlobStore(str(tmp_path / "blobs"))
    data = base64.b64decode(png(64, 64))
    page = StoredImage(sha256=blobs.put(data), media_type="image/png", width=64, height=64, size=len(data))
    batch = GradeBatch(batch_id="pages-b1", job_id="pages-j1", max_tokens=400, prompt_tokens_estimate=200,
                       questions=[Question(id="q1", prompt="Name two TCP header fields.", max_score=2)],
                       students=[StudentWork(student_id="s1", alias="s1", pages=[page], page_indices=[0],
                                             question_ids=["q1"])])
    grader = serve.get_deployment_handle("Grader", app_name=f"fake{os.environ.get('PYTEST_XDIST_WORKER', '')}")
    here = ray.get_runtime_context().get_node_id()

    async def grade(pages_from):
        return await grader.grade.remote(batch, pages_from)

    outcome, _ = asyncio.run(grade(PagesFrom(blobs.location, here)))
    assert [(r.student_id, r.question_id) for r in outcome.results] == [("s1", "q1")] and outcome.calls == 1
    with pytest.raises(PagesElsewhere):
        asyncio.run(grade(PagesFrom(blobs.location, "0" * 56)))
