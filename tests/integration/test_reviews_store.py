"""Teachers' reviews in the job store (SQLite and a real PostgreSQL server): the queue, a review
on the grid, idempotent replays, replacements kept in the audit trail, final scores in the
results, tenant scoping, and the pages a reviewer reads."""

import base64
import io

import pytest
from PIL import Image

from raygrade.errors import IllegalTransitionError, InvalidRequestError, NotFoundError
from raygrade.protocol import GradingJob, JobState, ReviewRequest
from raygrade.store import JobStore
from tests.integration.test_store import Clock, outcome, plan


def grid_job(n=4, **options) -> GradingJob:
    return GradingJob.model_validate({
        "assessment": {"questions": [{"id": "q1", "prompt": "p1", "max_score": 2, "score_step": 0.5},
                                     {"id": "q2", "prompt": "p2", "max_score": 1}]},
        "submissions": [{"student_id": f"s{i}", "pages": [{"type": "text", "text": f"answer {i}"}]}
                        for i in range(n)],
        "options": options})


@pytest.fixture
def store(store_url, tmp_path):
    s = JobStore(store_url, clock=Clock(), blob_uri=str(tmp_path / "blobs"))
    yield s
    s.close()


def graded(store, tenant="school-a", n=4, share=0.25, job=None):
    """A finished job: batch 0 at confidence 0.2, the rest at 0.9; ``share`` flagged."""
    job = job or grid_job(n, review_share=share)
    st, _ = store.create_job(job, tenant=tenant)
    batches = plan(st.id, job)
    store.record_plan(st.id, batches, [], "m")
    for i, b in enumerate(batches):
        store.complete_batch(st.id, outcome(b, conf=0.2 if i == 0 else 0.9))
    assert store.finish_if_complete(st.id).state == JobState.SUCCEEDED
    return st.id


def test_the_queue_lists_flagged_items_then_reviews_move_them_to_done(store):
    job_id = graded(store)
    pending, more = store.review_queue("raygrade", "school-a", job_id=job_id, status="pending")
    assert not more and len(pending) == 2 and {p.confidence for p in pending} == {0.2}
    item = pending[0]
    assert item.status == "pending" and item.graded_by == "model" and item.score == item.model_score == 1
    assert item.page_urls == [f"/v1/jobs/{job_id}/items/{item.id}/pages/0"]
    assert item.score_step == (0.5 if item.question_id == "q1" else None)

    done = store.review_item(job_id, item.id, ReviewRequest(score=0, comment="no mention of routing"),
                             tenant="school-a")
    assert done.status == "done" and done.score == 0 and done.graded_by == "teacher" and done.model_score == 1
    assert done.review.comment == "no mention of routing" and done.review.revisions == 1
    assert [p.id for p in store.review_queue("raygrade", "school-a", job_id=job_id, status="pending")[0]] == [
        pending[1].id]
    assert [p.id for p in store.review_queue("raygrade", "school-a", status="done")[0]] == [item.id]
    assert store.status(job_id).progress.items_reviewed == 1

    results = {r.item_id: r for r in store.results(job_id).results}
    assert results[item.id].score == 0 and results[item.id].model_score == 1
    assert results[item.id].graded_by == "teacher" and results[item.id].review.score == 0
    others = [r for r in results.values() if r.item_id != item.id]
    assert all(r.graded_by == "model" and r.review is None and r.score == r.model_score for r in others)


def test_a_second_review_replaces_the_first_and_both_stay_in_the_audit_trail(store):
    job_id = graded(store)
    item = store.review_queue("raygrade", "school-a", job_id=job_id)[0][0]
    store.review_item(job_id, item.id, ReviewRequest(score=0.5), tenant="school-a")
    again = store.review_item(job_id, item.id, ReviewRequest(score=0.5), tenant="school-a")   # a retried POST
    assert again.review.revisions == 1
    store._clock.now += 60
    second = store.review_item(job_id, item.id, ReviewRequest(score=1.5, comment="re-read"), tenant="school-a")
    assert second.score == 1.5 and second.review.revisions == 2 and second.review.reviewed_at == 1_000_060.0
    trail = store.review_history(job_id, item.id, tenant="school-a")
    assert [(t["score"], t["model_score"], t["comment"]) for t in trail] == [(0.5, 1, None), (1.5, 1, "re-read")]
    assert store.status(job_id).progress.items_reviewed == 1  # one item, reviewed twice


def test_reviews_are_refused_off_the_grid_for_other_tenants_and_for_items_not_graded(store):
    job_id = graded(store)
    item = store.review_queue("raygrade", "school-a", job_id=job_id)[0][0]
    off = 0.7 if item.question_id == "q1" else 1.5
    with pytest.raises(InvalidRequestError) as err:
        store.review_item(job_id, item.id, ReviewRequest(score=off), tenant="school-a")
    assert err.value.param == "score" and "grid" in str(err.value)
    with pytest.raises(InvalidRequestError):
        store.review_item(job_id, item.id, ReviewRequest(score=2.5), tenant="school-a")   # over max_score
    with pytest.raises(NotFoundError):
        store.review_item(job_id, item.id, ReviewRequest(score=1), tenant="school-b")
    with pytest.raises(NotFoundError):
        store.review_item(job_id, "item_99999", ReviewRequest(score=1), tenant="school-a")
    with pytest.raises(NotFoundError):
        store.review_item(job_id, "../etc", ReviewRequest(score=1), tenant="school-a")
    assert store.review_queue("raygrade", "school-b")[0] == []
    with pytest.raises(NotFoundError):
        store.review_queue("raygrade", "school-b", job_id=job_id)

    job = grid_job(2)
    st, _ = store.create_job(job, tenant="school-a")   # accepted, not graded yet
    with pytest.raises(IllegalTransitionError):
        store.review_item(st.id, "item_0", ReviewRequest(score=1), tenant="school-a")


def test_the_queue_pages_with_a_cursor_across_jobs_and_filters_by_question(store):
    jobs = [graded(store, share=0.5) for _ in range(2)]
    seen, after = [], None
    while True:
        page, more = store.review_queue("raygrade", "school-a", limit=3, after=after)
        seen += [(p.job_id, p.id) for p in page]
        if not more:
            break
        after = f"{page[-1].job_id}/{page[-1].id}"
    assert len(seen) == 8 and len(set(seen)) == 8 and {j for j, _ in seen} == set(jobs)
    q2 = store.review_queue("raygrade", "school-a", question_id="q2")[0]
    assert q2 and all(p.question_id == "q2" for p in q2)


def test_a_reviewer_reads_the_students_pages(store):
    png = io.BytesIO()
    Image.new("RGB", (40, 30), "white").save(png, format="PNG")
    job = GradingJob.model_validate({
        "assessment": {"questions": [{"id": "q1", "prompt": "p", "max_score": 2},
                                     {"id": "q2", "prompt": "p2", "max_score": 1}]},
        "submissions": [{"student_id": f"s{i}", "pages": [
            {"type": "image", "data": base64.b64encode(png.getvalue()).decode()},
            {"type": "text", "text": f"typed answer {i}"}]} for i in range(2)],
        "options": {"review_share": 1.0}})
    job_id = graded(store, job=job)
    item = store.review_queue("raygrade", "school-a", job_id=job_id)[0][0]
    data, media = store.item_page(job_id, item.id, 0, tenant="school-a")
    assert media == "image/png" and data == png.getvalue()
    text, media = store.item_page(job_id, item.id, 1, tenant="school-a")
    assert media.startswith("text/plain") and text.decode().startswith("typed answer")
    with pytest.raises(NotFoundError):
        store.item_page(job_id, item.id, 2, tenant="school-a")
    with pytest.raises(NotFoundError):
        store.item_page(job_id, item.id, 0, tenant="school-b")
