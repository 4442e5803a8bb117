"""The durable job store: one suite, run on SQLite and on a real PostgreSQL server."""

import pytest
import sqlalchemy as sa

from raygrade.batch import BatchOutcome, GradeBatch
from raygrade.blobs import inline
from raygrade.errors import ConflictError, NotFoundError, QuotaExceededError
from raygrade.planner import batch_key
from raygrade.prompts import StudentWork
from raygrade.protocol import (
    QUOTA_WINDOW_S,
    GradeResult,
    GradingErrorItem,
    GradingJob,
    JobState,
    TenantQuota,
    TextPage,
    Usage,
)
from raygrade.store import (
    BATCH_TRANSITIONS,
    IllegalTransitionError,
    JobStore,
    check_transition,
)


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def make_job(n=3, **options) -> GradingJob:
    return GradingJob.model_validate({
        "assessment": {"questions": [{"id": "q1", "prompt": "p1", "max_score": 2},
                                     {"id": "q2", "prompt": "p2", "max_score": 1}]},
        "submissions": [{"student_id": f"s{i}", "pages": [{"type": "text", "text": f"answer {i}"}]}
                        for i in range(n)],
        "options": options})


def plan(job_id: str, job: GradingJob, per_batch=2) -> list[GradeBatch]:
    works = [StudentWork(student_id=s.student_id, alias=f"a{i}", pages=[TextPage(text="x")], page_indices=[0],
                         question_ids=["q1", "q2"]) for i, s in enumerate(job.submissions)]
    out = []
    for k in range(0, len(works), per_batch):
        ws = works[k:k + per_batch]
        out.append(GradeBatch(batch_id=batch_key(job_id, [w.student_id for w in ws], ["q1", "q2"], None),
                              job_id=job_id, questions=job.assessment.questions, students=ws,
                              prompt_tokens_estimate=10, max_tokens=10))
    return out


def outcome(b: GradeBatch, conf=0.9, usage=10) -> BatchOutcome:
    return BatchOutcome(batch_id=b.batch_id, errors=[], calls=1,
                        usage=Usage(prompt_tokens=usage, completion_tokens=usage), results=[
        GradeResult(student_id=s.student_id, question_id=q, score=1, max_score=2 if q == "q1" else 1,
                    feedback="ok", confidence=conf, pages=[0], model="m", batch_id=b.batch_id, usage=Usage())
        for s in b.students for q in s.question_ids])


@pytest.fixture
def store(store_url, tmp_path):
    s = JobStore(store_url, clock=Clock(), blob_uri=str(tmp_path / "blobs"))
    yield s
    s.close()


def started(store, n=3, **options):
    job = make_job(n, **options)
    status, created = store.create_job(job)
    batches = plan(status.id, job)
    assert store.record_plan(status.id, batches, [], "m")
    return status.id, batches


def test_create_is_idempotent_per_key_and_rejects_a_different_body(store):
    job = make_job()
    s1, created1 = store.create_job(job, "key-1")
    s2, created2 = store.create_job(job, "key-1")
    assert created1 and not created2 and s1.id == s2.id
    assert s1.state == JobState.QUEUED and s1.progress.items_total == 6 and s1.progress.students == 3
    with pytest.raises(ConflictError):
        store.create_job(make_job(4), "key-1")
    s3, created3 = store.create_job(job)  # no key: a new job
    assert created3 and s3.id != s1.id
    assert store.get_job(s1.id) == job  # text pages are stored as they are
    assert store.unfinished_jobs() == [s1.id, s3.id]
    assert store.unfinished_jobs(queued_for_s=1.0) == []  # just created: left to their nudge
    store._clock.now += 1.0
    assert store.unfinished_jobs(queued_for_s=1.0) == [s1.id, s3.id]
    with pytest.raises(NotFoundError):
        store.status("job_nope")


def test_plan_is_recorded_once_and_batch_ids_are_deterministic(store):
    job = make_job()
    status, _ = store.create_job(job)
    batches = plan(status.id, job)
    assert [b.batch_id for b in batches] == [b.batch_id for b in plan(status.id, job)]
    errors = [GradingErrorItem(student_ids=["s2"], question_ids=["q2"], type="reading_error", message="unreadable")]
    assert store.record_plan(status.id, batches, errors, "m")
    assert not store.record_plan(status.id, batches, [], "m")  # a replayed plan writes nothing
    st = store.status(status.id)
    assert st.state == JobState.RUNNING and st.progress.batches_total == 2 and st.progress.items_failed == 1


def test_each_item_is_graded_exactly_once_when_a_batch_completes_twice(store):
    job_id, batches = started(store)
    leased = store.lease_batches(job_id, "A", 30, 10)
    assert [b.batch_id for b in leased] == [b.batch_id for b in batches]
    first = store.complete_batch(job_id, outcome(batches[0], conf=0.9))
    again = store.complete_batch(job_id, outcome(batches[0], conf=0.1))  # re-dispatched copy
    assert first == {"written": 4, "dropped": 0} and again == {"written": 0, "dropped": 4}
    res = store.results(job_id)
    assert len(res.results) == 4 and {r.confidence for r in res.results} == {0.9}
    assert res.usage.prompt_tokens == 10  # usage counted once per batch
    assert store.finish_if_complete(job_id) is None  # batch 2 still open
    store.complete_batch(job_id, outcome(batches[1]), replica="r1")
    st = store.finish_if_complete(job_id)
    assert st.state == JobState.SUCCEEDED and st.progress.items_graded == 6 and st.finished_at
    assert store.replicas(job_id) == {"r1": 1}
    assert store.unfinished_jobs() == []


def test_warnings_of_whole_questions_are_kept_once_in_the_status(store):
    from raygrade.protocol import JobWarning

    job_id, batches = started(store)
    store.lease_batches(job_id, "A", 30, 10)
    w = JobWarning(type="degenerate_reference", question_ids=["q1"], message="question q1: cannot separate")
    assert store.status(job_id).warnings == []
    store.complete_batch(job_id, outcome(batches[0]).model_copy(update={"warnings": [w]}))
    store.complete_batch(job_id, outcome(batches[0]).model_copy(update={"warnings": [w, w]}))  # a replayed copy
    store.complete_batch(job_id, outcome(batches[1]).model_copy(update={"warnings": [w]}))  # another batch
    st = store.finish_if_complete(job_id)
    assert st.state == JobState.SUCCEEDED and st.warnings == [w]
    listed, _ = store.list_jobs("raygrade", "default")
    assert store.status(job_id).warnings == [w] and [j.warnings for j in listed] == [[w]]


def test_expired_leases_are_taken_over_and_only_the_owner_releases(store):
    job_id, batches = started(store)
    clock = store._clock
    assert len(store.lease_batches(job_id, "A", 30, 1)) == 1
    assert [b.batch_id for b in store.lease_batches(job_id, "B", 30, 5)] == [batches[1].batch_id]
    assert store.lease_batches(job_id, "B", 30, 5) == []  # A's lease is live
    clock.now += 20
    assert store.renew_leases("A", 30) == 1 and store.renew_leases("B", 30) == 1
    clock.now += 20  # both renewed: still live
    assert store.lease_batches(job_id, "B", 30, 5) == []
    clock.now += 31  # A died: its lease expired, B takes over (and B's own lease expired too)
    took = store.lease_batches(job_id, "B", 30, 5)
    assert [b.batch_id for b in took] == [b.batch_id for b in batches]
    assert {b["id"]: b for b in store.batch_report(job_id)}[batches[0].batch_id]["attempts"] == 2
    assert store.record_grader_loss(batches[0].batch_id, "A", 3) is None  # no longer A's: nothing counted
    # The takeover is not a lost grader call: B's first loss is the batch's first, and releases it.
    assert store.record_grader_loss(batches[0].batch_id, "B", 3) == 1
    assert [b.batch_id for b in store.lease_batches(job_id, "C", 30, 5)] == [batches[0].batch_id]
    assert store.record_grader_loss(batches[0].batch_id, "C", 3) == 2
    store.lease_batches(job_id, "C", 30, 5)
    assert store.record_grader_loss(batches[0].batch_id, "C", 3) == 3  # the bound: kept leased, not released
    assert store.lease_batches(job_id, "D", 30, 5) == []
    report = {b["id"]: b for b in store.batch_report(job_id)}[batches[0].batch_id]
    assert (report["attempts"], report["grader_losses"]) == (4, 3)
    assert store.status(job_id).progress.batches_redispatched == 4


def test_plan_and_lease_leases_the_first_batches_as_two_calls_would(store):
    """One transaction when it records the plan: the first ``limit`` batches leased to the caller
    (attempts 1, a live lease that expires and renews as any), the rest pending; a second
    batcher's plan of the same job is not recorded and leases only what is pending."""
    job = make_job(6)
    status, _ = store.create_job(job)
    batches = plan(status.id, job)  # three batches
    got = store.plan_and_lease(status.id, batches, [], "m", "A", 30, 2)
    assert [b.batch_id for b in got] == [b.batch_id for b in batches[:2]] and got[0] == batches[0]
    report = {b["id"]: b for b in store.batch_report(status.id)}
    assert [(report[b.batch_id]["state"], report[b.batch_id]["attempts"]) for b in batches] == [
        ("leased", 1), ("leased", 1), ("pending", 0)]
    st = store.status(status.id)
    assert st.state == JobState.RUNNING and st.progress.batches_total == 3 and st.progress.batches_redispatched == 0
    # Another batcher planned the same job meanwhile: nothing recorded, the pending batch leased.
    assert [b.batch_id for b in store.plan_and_lease(status.id, batches, [], "m", "B", 30, 5)] == [batches[2].batch_id]
    assert store.lease_batches(status.id, "C", 30, 5) == []  # A's leases are live
    assert store.renew_leases("A", 30) == 2
    store._clock.now += 31  # A and B died
    assert [b.batch_id for b in store.lease_batches(status.id, "C", 30, 5)] == [b.batch_id for b in batches]
    assert store.status(status.id).progress.batches_redispatched == 3
    for b in batches:
        store.complete_batch(status.id, outcome(b))
    assert store.finish_if_complete(status.id).progress.items_graded == 12
    with pytest.raises(NotFoundError):
        store.plan_and_lease("job_nope", batches, [], "m", "A", 30, 2)
    cancelled, _ = store.create_job(make_job(2))
    store.cancel(cancelled.id)
    assert store.plan_and_lease(cancelled.id, plan(cancelled.id, make_job(2)), [], "m", "A", 30, 2) == []


def test_quorum_completion_cancels_what_is_left(store):
    job_id, batches = started(store, 4, completion={"rule": "quorum", "min_graded_share": 0.5})
    store.lease_batches(job_id, "A", 30, 5)
    store.complete_batch(job_id, outcome(batches[0]))
    st = store.finish_if_complete(job_id)
    assert st.state == JobState.PARTIAL and st.progress.items_graded == 4 and st.progress.items_cancelled == 4
    assert {e.type for e in store.results(job_id).errors} == {"not_graded"}
    # The straggler's late result writes nothing.
    assert store.complete_batch(job_id, outcome(batches[1]))["written"] == 0


def test_errors_missing_items_and_review_flags(store):
    job_id, batches = started(store, 4, review_share=0.25)
    b0 = outcome(batches[0], conf=0.2)
    b0 = b0.model_copy(update={"results": b0.results[:3], "errors": [GradingErrorItem(
        student_ids=[batches[0].students[1].student_id], question_ids=["q2"], type="output_parse_error",
        message="bad json", batch_id=batches[0].batch_id)]})
    b1 = outcome(batches[1], conf=0.9)
    b1 = b1.model_copy(update={"results": b1.results[:3]})  # one item silently missing
    store.complete_batch(job_id, b0)
    store.complete_batch(job_id, b1)
    st = store.finish_if_complete(job_id)
    assert st.state == JobState.PARTIAL and st.progress.items_graded == 6 and st.progress.items_failed == 2
    res = store.results(job_id)
    assert {(e.type, tuple(e.student_ids), tuple(e.question_ids)) for e in res.errors} == {
        ("output_parse_error", ("s1",), ("q2",)), ("missing_output", ("s3",), ("q2",))}
    flagged = [r for r in res.results if r.needs_review]
    assert len(flagged) == 2 and {r.confidence for r in flagged} == {0.2} and st.progress.items_needs_review == 2


def test_cancel_and_illegal_transitions(store):
    job_id, batches = started(store)
    store.lease_batches(job_id, "A", 30, 1)
    store.complete_batch(job_id, outcome(batches[0]))
    st = store.cancel(job_id)
    assert st.state == JobState.CANCELLED and st.progress.items_graded == 4 and st.progress.items_cancelled == 2
    assert store.lease_batches(job_id, "A", 30, 5) == []
    with pytest.raises(IllegalTransitionError):
        store.cancel(job_id)
    with pytest.raises(IllegalTransitionError):
        store.fail_job(job_id, GradingErrorItem(student_ids=[], question_ids=[], type="x", message="y"))
    assert store.finish_if_complete(job_id).state == JobState.CANCELLED
    with pytest.raises(IllegalTransitionError):
        check_transition(BATCH_TRANSITIONS, "batch", "done", "pending")


def test_fail_job_keeps_grades_and_types_the_rest(store):
    job_id, batches = started(store)
    store.complete_batch(job_id, outcome(batches[0]))
    st = store.fail_job(job_id, GradingErrorItem(student_ids=[], question_ids=[], type="internal_error",
                                                 message="boom"))
    assert st.state == JobState.PARTIAL and st.progress.items_failed == 2
    queued, _ = store.create_job(make_job())
    assert store.fail_job(queued.id, GradingErrorItem(student_ids=[], question_ids=[], type="dispatch_error",
                                                      message="x")).state == JobState.FAILED


def test_webhook_outbox_retries_then_gives_up(store):
    job_id, batches = started(store, 2, webhook_url="http://127.0.0.1:9/hook")
    store.complete_batch(job_id, outcome(batches[0]))
    assert store.lease_webhooks("W", 30) == []  # nothing before the job ends
    store.finish_if_complete(job_id)
    assert store.lease_webhooks("W", 30) == [(job_id, "grading.job.completed", "http://127.0.0.1:9/hook", 1)]
    assert store.lease_webhooks("W2", 30) == []  # leased
    assert store.webhook_result(job_id, ok=False, error="503", retry_in_s=5, max_attempts=2) == "pending"
    assert store.lease_webhooks("W", 30) == []  # not due yet
    store._clock.now += 5
    assert store.lease_webhooks("W", 30) == [(job_id, "grading.job.completed", "http://127.0.0.1:9/hook", 2)]
    assert store.webhook_result(job_id, ok=False, error="503", max_attempts=2) == "failed"
    assert store.webhook(job_id)["attempts"] == 2


def test_a_reopened_store_resumes_from_disk(store_url):
    clock = Clock()
    s = JobStore(store_url, clock=clock)
    job_id, batches = started(s)
    s.lease_batches(job_id, "A", 30, 5)
    s.complete_batch(job_id, outcome(batches[0]))
    s.close()
    s2 = JobStore(store_url, clock=clock)  # the "restarted cluster"
    assert s2.unfinished_jobs() == [job_id]
    clock.now += 31
    assert [b.batch_id for b in s2.lease_batches(job_id, "B", 30, 5)] == [batches[1].batch_id]
    s2.complete_batch(job_id, outcome(batches[1]))
    assert s2.finish_if_complete(job_id).progress.items_graded == 6
    s2.close()


def test_applications_sharing_a_database_keep_their_own_jobs_and_keys(store):
    job = make_job()
    a, _ = store.create_job(job, "key-1", namespace="app-a")
    b, created = store.create_job(job, "key-1", namespace="app-b")
    assert created and a.id != b.id
    assert store.create_job(job, "key-1", namespace="app-a")[0].id == a.id
    assert store.unfinished_jobs("app-a") == [a.id] and store.unfinished_jobs("app-b") == [b.id]


def png(tag: str, w=40, h=30) -> str:
    import base64
    import io

    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("student", tag)
    buf = io.BytesIO()
    Image.new("RGB", (w, h), "white").save(buf, format="PNG", pnginfo=info)
    return base64.b64encode(buf.getvalue()).decode()


def image_job(n: int, shared: int = 0) -> GradingJob:
    """``n`` students with one image page each; the first ``shared`` send the very same file."""
    return GradingJob.model_validate({
        "assessment": {"questions": [{"id": "q1", "prompt": "p1", "max_score": 2},
                                     {"id": "q2", "prompt": "p2", "max_score": 1}]},
        "submissions": [{"student_id": f"s{i}", "pages": [{"type": "image", "data": png(
            "same" if i < shared else f"s{i}", w=40 if i < shared else 40 + i % 7)}]} for i in range(n)]})


def image_plan(job_id: str, job: GradingJob, per_batch=2) -> list[GradeBatch]:
    """Batches carrying the stored page references, as the batcher plans them."""
    works = [StudentWork(student_id=s.student_id, alias=f"a{i}", pages=list(s.pages), page_indices=[0],
                         question_ids=["q1", "q2"]) for i, s in enumerate(job.submissions)]
    return [GradeBatch(batch_id=batch_key(job_id, [w.student_id for w in works[k:k + per_batch]], ["q1", "q2"], None),
                       job_id=job_id, questions=job.assessment.questions, students=works[k:k + per_batch],
                       prompt_tokens_estimate=10, max_tokens=10) for k in range(0, len(works), per_batch)]


def test_page_images_are_stored_once_by_reference(store, tmp_path):
    from raygrade.protocol import ImagePage, StoredImage
    from raygrade.store.schema import batches as batches_table
    from raygrade.store.schema import job_bodies

    job = image_job(5, shared=3)
    status, _ = store.create_job(job)
    stored = store.get_job(status.id)
    pages = [s.pages[0] for s in stored.submissions]
    assert all(isinstance(p, StoredImage) for p in pages)
    assert len({p.sha256 for p in pages}) == 3, "three students sent one file: stored once"
    assert len(list((tmp_path / "blobs").rglob("*"))) - len(list((tmp_path / "blobs").glob("*"))) == 3
    assert (pages[4].width, pages[4].height, pages[4].media_type) == (44, 30, "image/png")
    back = inline(pages[4], store.blobs)
    assert isinstance(back, ImagePage) and back.data == job.submissions[4].pages[0].data
    # Rows carry references, never bytes: the body and every batch payload stay small.
    batches = image_plan(status.id, stored)
    assert store.record_plan(status.id, batches, [], "m")
    leased = store.lease_batches(status.id, "A", 30, 10)
    assert isinstance(leased[0].students[0].pages[0], StoredImage)
    with store.engine.connect() as conn:
        body = conn.execute(sa.select(job_bodies.c.body).where(job_bodies.c.job_id == status.id)).scalar_one()
        payloads = conn.execute(sa.select(batches_table.c.payload).where(batches_table.c.job_id == status.id)).scalars()
        assert job.submissions[4].pages[0].data not in body
        assert max(len(p) for p in payloads) < 3000
    # The same job again (an idempotent replay) writes no new blob and matches its key.
    s1, _ = store.create_job(job, "k")
    s2, created = store.create_job(job, "k")
    assert s1.id == s2.id and not created


def test_an_unreadable_image_is_a_400_naming_the_page(store):
    import base64

    from raygrade.errors import InvalidRequestError

    job = image_job(2)
    garbage = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64).decode()  # PNG magic, no image
    job.submissions[1].pages[0].data = garbage
    with pytest.raises(InvalidRequestError) as err:
        store.create_job(job)
    assert err.value.param == "submissions[1].pages[0].data" and err.value.status_code == 400


def test_a_missing_or_corrupt_blob_is_a_storage_error(store, tmp_path):
    from raygrade.blobs import BlobStore
    from raygrade.errors import StorageError

    status, _ = store.create_job(image_job(1))
    page = store.get_job(status.id).submissions[0].pages[0]
    (path,) = (tmp_path / "blobs").rglob(page.sha256)
    path.write_bytes(b"not the stored image")
    with pytest.raises(StorageError, match="corrupt"):
        inline(page, BlobStore(str(tmp_path / "blobs")))
    path.unlink()
    with pytest.raises(StorageError, match="missing"):
        inline(page, BlobStore(str(tmp_path / "blobs")))


def test_a_collection_keeps_what_jobs_and_batches_reference_and_deletes_the_rest(store, tmp_path):
    """``raygrade blobs gc`` on both back ends: the pages of a job (its body and its planned
    batches) stay; a blob nothing references goes once older than the grace period."""
    import os
    import time

    from raygrade.store import blob_gc

    status, _ = store.create_job(image_job(3))
    stored = store.get_job(status.id)
    assert store.record_plan(status.id, image_plan(status.id, stored), [], "m")
    orphan = store.blobs.put(b"a refused upload's page")
    store.blobs.clock = time.time  # blobs' times are the filesystem's (this store's clock is virtual)
    old = time.time() - 7200
    for path in (tmp_path / "blobs").rglob("*"):
        os.utime(path, (old, old))
    out = blob_gc.collect(store)
    assert (out.blobs, out.referenced, out.deleted, out.missing) == (4, 3, 1, 0), out
    assert not store.blobs.has(orphan)
    assert all(store.blobs.has(p.sha256) for s in stored.submissions for p in s.pages)


def test_status_lease_and_complete_cost_does_not_grow_with_the_job(store):
    """A 5,000-item job against a 50-item one: the same calls, at most a small multiple
    (the store keeps counters and touches only the batch's rows; before, these scanned
    the job, ≈ 8× at 1,000 students)."""
    import time

    def cost(n_students: int) -> dict[str, float]:
        job = image_job(n_students)
        status, _ = store.create_job(job)
        batches = image_plan(status.id, store.get_job(status.id))
        store.record_plan(status.id, batches, [], "m")
        t = {"status": [], "lease": [], "complete": []}
        for _ in range(10):
            t0 = time.perf_counter()
            store.status(status.id)
            t["status"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            (b,) = store.lease_batches(status.id, "A", 30, 1)
            t["lease"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            store.complete_batch(status.id, outcome(b))
            t["complete"].append(time.perf_counter() - t0)
        assert store.status(status.id).progress.items_graded == 10 * 4
        return {k: min(v) for k, v in t.items()}

    small, large = cost(25), cost(2500)
    slow = {k: large[k] / small[k] for k in small if large[k] > 4 * small[k] + 0.002}
    assert not slow, f"per-call cost grows with the job: {slow} (50 items: {small}, 5,000 items: {large})"


def _jobs_in_store(store) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM raygrade_jobs")).scalar_one()


def test_quota_of_active_jobs_refuses_the_next_job_until_one_ends(store):
    store.set_quota("default", TenantQuota(max_active_jobs=2))
    first, _ = started(store, n=1)
    store.create_job(make_job(1), "k2")
    with pytest.raises(QuotaExceededError) as refused:
        store.create_job(make_job(1))
    assert refused.value.code == "max_active_jobs" and refused.value.retry_after_s is None
    assert refused.value.status_code == 429 and refused.value.error_type == "insufficient_quota"
    assert _jobs_in_store(store) == 2  # nothing of the refused job was kept
    assert store.create_job(make_job(1), "k2")[1] is False  # a replay is not a new job: never refused
    assert store.create_job(make_job(1), tenant="school-b")[1]  # another tenant's quota is its own
    with pytest.raises(QuotaExceededError):
        store.check_quota("default", 2)  # the cheap pre-check says the same
    store.check_quota("default", 2, idempotency_key="k2")  # ... and lets a replay through
    store.cancel(first)
    assert store.create_job(make_job(1))[1]
    assert store.usage("default").active_jobs == 2 and store.usage("school-b").quota is None


def test_quota_of_items_per_day_is_a_rolling_window_with_a_retry_after(store):
    clock = store._clock
    t0 = clock.now
    store.set_quota("default", TenantQuota(items_per_day=10))
    store.create_job(make_job(3))  # 6 items at t0
    clock.now = t0 + 100
    store.create_job(make_job(2))  # 4 more: 10 of 10
    clock.now = t0 + 200
    with pytest.raises(QuotaExceededError) as refused:
        store.create_job(make_job(1))
    # 2 items over: room when the first job (6 items, accepted at t0) leaves the window.
    assert refused.value.code == "items_per_day" and refused.value.retry_after_s == pytest.approx(QUOTA_WINDOW_S - 200)
    with pytest.raises(QuotaExceededError) as too_big:
        store.create_job(make_job(6))  # 12 items: more than the whole quota, never fits
    assert too_big.value.retry_after_s is None and "split it" in too_big.value.message
    assert store.usage("default").items == 10 and _jobs_in_store(store) == 2
    clock.now = t0 + QUOTA_WINDOW_S + 1
    assert store.create_job(make_job(3))[1]  # the first job left the window: 4 + 6
    u = store.usage("default")
    assert (u.items, u.quota.items_per_day, u.window_s) == (10, 10, QUOTA_WINDOW_S)


def test_quota_of_tokens_per_day_counts_what_the_jobs_used(store):
    clock = store._clock
    t0 = clock.now
    store.set_quota("default", TenantQuota(tokens_per_day=30))
    job_id, batches = started(store, n=4)
    store.lease_batches(job_id, "A", 30, 2)
    store.complete_batch(job_id, outcome(batches[0], usage=10))  # 20 tokens (prompt + completion)
    clock.now = t0 + 50
    second, _ = store.create_job(make_job(1))  # 20 < 30: accepted
    store.complete_batch(job_id, outcome(batches[1], usage=10))  # 40
    with pytest.raises(QuotaExceededError) as refused:
        store.create_job(make_job(1))
    assert refused.value.code == "tokens_per_day"
    # room when the first job's tokens leave the window, a day after it was accepted
    assert refused.value.retry_after_s == pytest.approx(QUOTA_WINDOW_S - 50)
    assert store.usage("default").tokens == 40
    assert store.clear_quota("default") and not store.clear_quota("default")
    assert store.create_job(make_job(1))[1] and store.list_quotas() == {}


def test_concurrent_creates_from_two_replicas_cannot_pass_a_quota(store_url, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    if store_url.startswith("sqlite"):
        pytest.skip("a SQLite store has one writer thread (the registry replica's)")
    stores = [JobStore(store_url, clock=Clock(), blob_uri=str(tmp_path / "b")) for _ in range(2)]
    stores[0].set_quota("school-a", TenantQuota(max_active_jobs=3, items_per_day=40))

    def create(i):
        try:
            return stores[i % 2].create_job(make_job(1), tenant="school-a")[1]
        except QuotaExceededError:
            return False

    with ThreadPoolExecutor(12) as pool:
        created = list(pool.map(create, range(24)))
    assert created.count(True) == 3 and stores[1].usage("school-a").active_jobs == 3
    for s in stores:
        s.close()


def test_a_store_from_before_alembic_is_stamped_and_upgraded(store_url, tmp_path):
    from raygrade.store import COUNTER_COLUMNS, VERSION_TABLE, migrate

    s = JobStore(store_url, clock=Clock(), blob_uri=str(tmp_path / "blobs"))
    job_id, batches = started(s, n=3)
    s.lease_batches(job_id, "A", 30, 10)
    s.complete_batch(job_id, outcome(batches[0]))
    before = s.status(job_id)
    job = s.get_job(job_id)
    with s.engine.begin() as conn:  # raygrade 0.1's first schema: no counters, bodies in the job row, no version
        conn.execute(sa.text(f"DROP TABLE {VERSION_TABLE}"))
        conn.execute(sa.text("DROP INDEX raygrade_batches_job_state_seq"))
        conn.execute(sa.text("DROP INDEX raygrade_items_job_batch"))
        for c in COUNTER_COLUMNS:
            conn.execute(sa.text(f"ALTER TABLE raygrade_jobs DROP COLUMN {c}"))
        conn.execute(sa.text("ALTER TABLE raygrade_jobs ADD COLUMN body TEXT"))
        conn.execute(sa.text("UPDATE raygrade_jobs SET body = (SELECT body FROM raygrade_job_bodies "
                             "WHERE raygrade_job_bodies.job_id = raygrade_jobs.id)"))
        conn.execute(sa.text("DROP TABLE raygrade_job_bodies"))
    s.close()
    s = JobStore(store_url, clock=Clock(), blob_uri=str(tmp_path / "blobs"))  # stamps 0001, upgrades on open
    assert s.status(job_id) == before and before.progress.items_graded == 4
    assert s.get_job(job_id) == job
    assert "body" not in {c["name"] for c in sa.inspect(s.engine).get_columns("raygrade_jobs")}
    assert migrate(s.engine) == []  # idempotent
    s.complete_batch(job_id, outcome(batches[1]))
    assert s.finish_if_complete(job_id).state == JobState.SUCCEEDED
    s.close()


def test_the_revisions_build_exactly_the_declared_schema_and_downgrade_keeps_the_data(store_url, tmp_path):
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

    from raygrade.store import VERSION_TABLE, metadata, migrate

    s = JobStore(store_url, clock=Clock(), blob_uri=str(tmp_path / "blobs"))

    def diff():
        with s.engine.connect() as conn:
            return [d for d in compare_metadata(MigrationContext.configure(conn), metadata)
                    if not (d[0] == "remove_table" and d[1].name == VERSION_TABLE)]

    assert diff() == []  # a new store: the revisions in order produce the tables the code declares
    job_id, batches = started(s, n=3)
    s.lease_batches(job_id, "A", 30, 10)
    s.complete_batch(job_id, outcome(batches[0]))
    before, job = s.status(job_id), s.get_job(job_id)
    cfg = Config()
    cfg.set_main_option("script_location", "raygrade:migrations")
    with s.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    assert "raygrade_job_bodies" not in sa.inspect(s.engine).get_table_names()
    assert migrate(s.engine) == [f"{n:04d}" for n in range(2, 14)]
    assert diff() == []
    assert s.status(job_id) == before and s.get_job(job_id) == job  # bodies and counters survived the round trip
    s.close()


def test_replicas_opening_a_new_store_at_once_migrate_it_once(store_url, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:  # PostgreSQL deployments start two registry replicas together
        stores = list(pool.map(lambda _: JobStore(store_url, clock=Clock(), blob_uri=str(tmp_path / "b")), range(4)))
    job_id, _ = started(stores[0], n=2)
    assert all(s.status(job_id).id == job_id for s in stores)
    for s in stores:
        s.close()


def test_the_ingress_records_jobs_itself_on_postgresql_only(store, store_url):
    """``DirectStore.create_jobs`` (the ingress's writes): on PostgreSQL each job is recorded in the
    registry's store with its own result (a replay of a key, a key used with another body); on
    SQLite nothing is written (``None``: the registry is its one writer)."""
    import asyncio

    from raygrade.config import StoreConfig
    from raygrade.serve.accept import NewJob
    from raygrade.serve.direct_store import DirectStore

    direct = DirectStore(None, StoreConfig(url=store_url), "raygrade", on_store_node=lambda: True)
    job = make_job()
    news = [NewJob(j, key, "t1", {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}, None, True)
            for j, key in ((job, "k1"), (job, "k1"), (make_job(4), "k1"), (job, None))]
    results = asyncio.run(direct.create_jobs(news))
    if store.dialect == "sqlite":
        assert results is None and store.unfinished_jobs() == []
        return
    assert results is not None
    (first, created1), (replay, created2), conflict, (other, created3) = results
    assert created1 and not created2 and replay.id == first.id and created3 and other.id != first.id
    assert isinstance(conflict, ConflictError)
    assert store.unfinished_jobs() == [first.id, other.id]  # the registry's store sees them
    assert store.status(first.id, "t1").progress.items_total == 6 and store.get_job(first.id) == job
    assert store.trace_context(first.id) == news[0].trace_context
