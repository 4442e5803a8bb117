"""Teachers' reviews in the job store (SQLite and a real PostgreSQL server): the queue, a review
on the grid, idempotent replays, replacements kept in the audit trail, final scores in the
results, tenant scoping, and the pages a reviewer reads."""

import base64
import io
import math

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
    assert store.results(job_id).review_agreement is None
    pending, more = store.review_queue("raygrade", "school-a", job_id=job_id, status="pending")
    assert not more and len(pending) == 2 and {p.confidence for p in pending} == {0.2}
    item = pending[0]
    assert item.status == "pending" and item.graded_by == "model" and item.score == item.model_score == 1
    assert item.transcription is None   # typed answers: nothing was transcribed
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

    res = store.results(job_id)
    assert res.review_agreement.reviewed == 1 and res.review_agreement.exact == 0
    assert res.review_agreement.mae == 1 and res.review_agreement.mae_of_max in (0.5, 1.0)
    results = {r.item_id: r for r in res.results}
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
    assert item.transcription == "x"   # what OCR read into the batch (plan() puts "x" there)
    data, media = store.item_page(job_id, item.id, 0, tenant="school-a")
    assert media == "image/png" and data == png.getvalue()
    text, media = store.item_page(job_id, item.id, 1, tenant="school-a")
    assert media.startswith("text/plain") and text.decode().startswith("typed answer")
    with pytest.raises(NotFoundError):
        store.item_page(job_id, item.id, 2, tenant="school-a")
    with pytest.raises(NotFoundError):
        store.item_page(job_id, item.id, 0, tenant="school-b")
    # A regrade learns from a reviewed scanned answer through its transcription.
    store.review_item(job_id, item.id, ReviewRequest(score=2), tenant="school-a")
    child, _ = store.regrade_question(job_id, item.question_id, tenant="school-a")
    [question] = store.get_job(child.id).assessment.questions
    assert question.examples[-1].answer == "x" and question.examples[-1].score == 2


def child_plan(store, job_id):
    from raygrade.batch import GradeBatch
    from raygrade.planner import batch_key
    from raygrade.prompts import StudentWork
    from raygrade.protocol import TextPage

    job = store.get_job(job_id)
    works = [StudentWork(student_id=s.student_id, alias=f"a{i}", pages=[TextPage(text="x")], page_indices=[0],
                         question_ids=["q1"]) for i, s in enumerate(job.submissions)]
    return [GradeBatch(batch_id=batch_key(job_id, [w.student_id for w in works], ["q1"], None), job_id=job_id,
                       questions=job.assessment.questions, students=works, prompt_tokens_estimate=10, max_tokens=10)]


def test_a_regrade_learns_from_reviews_and_replaces_only_unreviewed_model_grades(store):
    from raygrade.errors import ConflictError
    from raygrade.protocol import GradeResult, Usage

    job_id = graded(store, n=6, share=0.25)          # 12 items, 3 flagged
    with pytest.raises(ConflictError):               # nothing reviewed yet: nothing to learn
        store.regrade_question(job_id, "q1", tenant="school-a")
    q1 = [i for i in store.review_queue("raygrade", "school-a", job_id=job_id, question_id="q1")[0]]
    assert q1
    store.review_item(job_id, q1[0].id, ReviewRequest(score=2, comment="complete"), tenant="school-a")
    child, created = store.regrade_question(job_id, "q1", tenant="school-a")
    assert created and child.regrade_of == job_id and child.progress.items_total == 5   # 6 students, 1 reviewed
    again, created = store.regrade_question(job_id, "q1", tenant="school-a")
    assert (again.id, created) == (child.id, False)   # the same reviews: the same regrade
    body = store.get_job(child.id)
    [question] = body.assessment.questions
    assert question.id == "q1" and question.examples[-1].score == 2 and question.examples[-1].feedback == "complete"
    assert question.examples[-1].answer.startswith("answer ")
    assert q1[0].student_id not in {s.student_id for s in body.submissions}
    with pytest.raises(NotFoundError):
        store.regrade_question(job_id, "q1", tenant="school-b")
    with pytest.raises(NotFoundError):
        store.regrade_question(job_id, "q9", tenant="school-a")

    # A teacher reviews one more item while the regrade runs: that review stands.
    late = next(s.student_id for s in body.submissions)
    late_item = next(r for r in store.results(job_id).results if (r.student_id, r.question_id) == (late, "q1"))
    store.review_item(job_id, late_item.item_id, ReviewRequest(score=0.5), tenant="school-a")

    [batch] = child_plan(store, child.id)
    assert store.record_plan(child.id, [batch], [], "m")
    store.lease_batches(child.id, "A", 30, 10)
    store.complete_batch(child.id, outcome(batch).model_copy(update={"results": [
        GradeResult(student_id=s.student_id, question_id="q1", score=1.5, max_score=2, feedback="regraded",
                    confidence=0.99, pages=[0], model="m", batch_id=batch.batch_id, usage=Usage())
        for s in batch.students]}))
    assert store.finish_if_complete(child.id).state == JobState.SUCCEEDED

    after = {(r.student_id, r.question_id): r for r in store.results(job_id).results}
    for s in body.submissions:
        r = after[(s.student_id, "q1")]
        if s.student_id == late:
            assert (r.graded_by, r.score, r.feedback) == ("teacher", 0.5, "ok")
        else:
            assert (r.graded_by, r.score, r.model_score, r.feedback) == ("model", 1.5, 1.5, "regraded")
    assert after[(q1[0].student_id, "q1")].score == 2
    # The cut is recomputed: 3 of 12 in all; the regraded items are confident now, so q2's least
    # confident items (confidence 0.2, from the first batch) fill what the reviewed flagged item leaves.
    st = store.status(job_id)
    flagged = [r for r in after.values() if r.needs_review]
    assert st.progress.items_needs_review == len(flagged) == 3
    assert all(r.question_id == "q2" or r.review is not None for r in flagged)


def test_a_regrade_waits_for_its_job_to_end(store):
    from raygrade.errors import IllegalTransitionError

    st, _ = store.create_job(grid_job(2), tenant="school-a")
    with pytest.raises(IllegalTransitionError):
        store.regrade_question(st.id, "q1", tenant="school-a")


def test_a_review_target_flags_the_fewest_items_the_expected_agreement_needs(store):
    from raygrade.protocol import JobOptions

    with pytest.raises(ValueError, match="not both"):
        JobOptions.model_validate({"review_share": 0.2, "review_target": {"metric": "exact", "value": 0.9}})
    job = grid_job(4, review_target={"metric": "exact", "value": 0.75})
    job_id = graded(store, job=job)   # 8 items: 4 at confidence 0.2 (batch 0), 4 at 0.9
    st = store.status(job_id)
    # Expected exact with none reviewed: (4 x 0.2 + 4 x 0.9) / 8 = 0.55; each 0.2 item reviewed adds
    # 0.8 / 8 = 0.1: 0.65 after one, 0.75 after two.
    assert st.review_plan.flagged == 2 and st.review_plan.expected == pytest.approx(0.75)
    assert st.review_plan.share == pytest.approx(0.25) and st.progress.items_needs_review == 2
    assert store.get_job(job_id).options.review_target.value == 0.75   # the stored body reads back
    flagged = [r for r in store.results(job_id).results if r.needs_review]
    assert len(flagged) == 2 and {r.confidence for r in flagged} == {0.2}


def test_a_qwk_target_flags_the_largest_expected_errors_per_question(store):
    job = grid_job(4, review_target={"metric": "qwk", "value": 0.9})
    job_id = graded(store, job=job)   # per question: 2 items at confidence 0.2, 2 at 0.9, every score 1
    st = store.status(job_id)
    # Each question's grid step is 0.5; expected absolute errors (1 - confidence) x 0.5 = 0.4 and 0.05,
    # squared max(E|e| x step, pi/2 x E|e|^2) = 0.2513 and 0.025. Nothing reviewed expects QWK 0 (every
    # score 1: the chance term is the mean error); a 0.2 item reviewed adds 0.2513 / (4 x 0.1382) / 2
    # questions = 0.227, a 0.9 item 0.023: the four 0.2 items reach 0.9.
    low, high = math.pi / 2 * 0.4 ** 2, 0.025
    assert st.review_plan.metric == "qwk" and st.review_plan.flagged == 4
    assert st.review_plan.expected == pytest.approx(2 * low / (2 * low + 2 * high))
    flagged = [r for r in store.results(job_id).results if r.needs_review]
    assert sorted(r.confidence for r in flagged) == [0.2, 0.2, 0.2, 0.2]
    assert {r.question_id for r in flagged} == {"q1", "q2"}
    assert store.get_job(job_id).options.review_target.metric == "qwk"


def test_an_audit_sample_is_flagged_besides_the_share_and_its_reviews_recalibrate_the_job(store):
    from raygrade.recalibration import is_audit

    job = grid_job(20, review_share=0.1, review_audit_share=0.3)
    job_id = graded(store, job=job)   # 40 items: 4 at confidence 0.2 (batch 0), 36 at 0.9, every score 1
    res = store.results(job_id)
    audit = {r.item_id for r in res.results if is_audit(job_id, r.student_id, r.question_id, 0.3)}
    assert {r.item_id for r in res.results if r.audit} == audit and 4 < len(audit) < 25
    risky = {r.item_id for r in res.results if r.needs_review} - audit
    assert len(risky) == 4  # the share's budget, the audit sample besides it
    assert {r.item_id for r in res.results if r.needs_review} == audit | risky
    assert res.recalibration is None and all(r.calibrated_confidence is None for r in res.results)

    # The teacher finds every audited 0.9 grade wrong: the job's 0.9 grades are recalibrated down.
    confident = [r for r in res.results if r.item_id in audit and r.confidence == 0.9]
    for r in confident:
        store.review_item(job_id, r.item_id, ReviewRequest(score=0), tenant="school-a")
    after = store.results(job_id)
    assert after.recalibration.audited == len(confident)
    lowered = {r.calibrated_confidence for r in after.results if r.confidence == 0.9}
    assert len(lowered) == 1 and lowered.pop() < 0.6
    outside = next(r for r in after.results if r.item_id not in audit and r.review is None)
    store.review_item(job_id, outside.item_id, ReviewRequest(score=1), tenant="school-a")
    assert store.results(job_id).recalibration.audited == len(confident)  # a risk-routed review is not evidence


def test_audit_reviews_recompute_a_review_targets_choice(store):
    job = grid_job(20, review_target={"metric": "exact", "value": 0.8}, review_audit_share=0.3)
    job_id = graded(store, job=job)
    before = store.status(job_id).review_plan
    res = store.results(job_id)
    for r in res.results:
        if r.audit and r.confidence == 0.9:
            store.review_item(job_id, r.item_id, ReviewRequest(score=0), tenant="school-a")
    plan = store.status(job_id).review_plan
    assert plan.flagged > before.flagged and plan.expected >= 0.8 - 1e-9  # less trust: more to review


def test_an_exact_target_is_forecast_before_grading_from_the_namespaces_recent_jobs(store, store_url):
    from raygrade.review import target_cut

    target = {"metric": "exact", "value": 0.9}
    first = store.create_job(grid_job(30, review_target=target), tenant="school-a")[0]
    assert first.review_plan is None                          # no history yet
    done = graded(store, job=grid_job(30, review_share=0.1))  # 60 graded items of model "m", the latest
    st = store.create_job(grid_job(30, review_target=target), tenant="school-b")[0]
    picked, expected = target_cut([r.confidence for r in store.results(done).results], 0.9)
    plan = st.review_plan
    assert (plan.basis, plan.history_items, plan.flagged) == ("history", 60, 0) and 0 < len(picked) < 60
    assert plan.share == pytest.approx(len(picked) / 60) and plan.expected == pytest.approx(expected)
    assert store.create_job(grid_job(3, review_target={"metric": "qwk", "value": 0.8}))[0].review_plan is None
    other = grid_job(30, review_target=target)
    other.options.model = "another-model"                     # another model's history: none
    assert store.create_job(other)[0].review_plan is None
    assert store.review_forecast("raygrade", None, other.options.review_target) == plan
    assert store.review_forecast("raygrade", "m", other.options.review_target) == plan

    # `raygrade estimate --review-target 0.9`: the same forecast for the provider's model, from the app's store.
    from raygrade.bulk.estimate import review_forecast_line
    from raygrade.config import ProviderConfig, RaygradeArgs, StoreConfig

    args = RaygradeArgs(provider=ProviderConfig(model="m", api_key_env="X"), store=StoreConfig(url=store_url))
    assert review_forecast_line(args, 0.9) == (f"review target exact >= 0.9: expected to flag {plan.share:.1%} of the "
                                               f"items (expected exact {plan.expected:.3f}), from the confidences of "
                                               "60 graded items of model 'm'")
    assert "fewer than 50 graded items of model 'x'" in review_forecast_line(
        args.model_copy(update={"provider": ProviderConfig(model="x", api_key_env="X")}), 0.9)
    missing = args.model_copy(update={"store": StoreConfig(url=f"sqlite:///{store_url.split('///')[-1]}.none")})
    if store_url.startswith("sqlite"):
        assert "no job store" in review_forecast_line(missing, 0.9)


def test_the_reviewed_webhook_is_queued_once_when_the_queue_empties(store):
    job = grid_job(4, review_share=0.25, webhook_url="http://127.0.0.1:9/hook")
    job_id = graded(store, job=job)
    assert store.webhook(job_id)["state"] == "pending"          # grading.job.completed
    store.webhook_result(job_id, ok=True)
    pending = store.review_queue("raygrade", "school-a", job_id=job_id, status="pending")[0]
    assert len(pending) == 2
    store.review_item(job_id, pending[0].id, ReviewRequest(score=1), tenant="school-a")
    assert store.webhook(job_id, "grading.job.reviewed") is None  # one left
    store.review_item(job_id, pending[1].id, ReviewRequest(score=1), tenant="school-a")
    assert store.webhook(job_id, "grading.job.reviewed")["state"] == "pending"
    assert store.lease_webhooks("W", 30) == [(job_id, "grading.job.reviewed", "http://127.0.0.1:9/hook", 1)]
    assert store.webhook_result(job_id, event="grading.job.reviewed", ok=True) == "delivered"
    store.review_item(job_id, pending[1].id, ReviewRequest(score=0.5), tenant="school-a")   # a correction
    assert store.webhook(job_id, "grading.job.reviewed")["attempts"] == 1 and store.lease_webhooks("W", 30) == []
    assert store.webhook(job_id)["state"] == "delivered"        # the completion webhook is its own row


@pytest.mark.parametrize("by", ["expected_error", "confidence"])
def test_review_share_routes_by_expected_error_or_by_confidence(store, by):
    """q1's grades (max 2, step 0.5) are less confident but a miss costs a quarter of the maximum;
    q2's (max 1, two levels) are more confident but a miss costs half of it."""
    from raygrade.batch import BatchOutcome
    from raygrade.protocol import GradeResult, Usage

    job = grid_job(4, review_share=0.25, review_by=by)
    st, _ = store.create_job(job, tenant="school-a")
    batches = plan(st.id, job)
    store.record_plan(st.id, batches, [], "m")
    for b in batches:
        store.complete_batch(st.id, BatchOutcome(batch_id=b.batch_id, errors=[], calls=1, usage=Usage(), results=[
            GradeResult(student_id=s.student_id, question_id=q, score=1, max_score=2 if q == "q1" else 1,
                        feedback="ok", pages=[0], model="m", batch_id=b.batch_id, usage=Usage(),
                        confidence=0.5 if q == "q1" else 0.7, expected_error=0.25 if q == "q1" else 0.3)
            for s in b.students for q in s.question_ids]))
    assert store.finish_if_complete(st.id).state == JobState.SUCCEEDED
    flagged = [r for r in store.results(st.id).results if r.needs_review]
    assert len(flagged) == 2
    assert {r.question_id for r in flagged} == ({"q2"} if by == "expected_error" else {"q1"})
    pending, _ = store.review_queue("raygrade", "school-a", job_id=st.id, status="pending")
    assert {p.expected_error for p in pending} == ({0.3} if by == "expected_error" else {0.25})
