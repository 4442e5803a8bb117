"""JobRegistryImpl (plain class): idempotency, no double grades, terminal states."""

import pytest

from raygrade.errors import ConflictError, NotFoundError
from raygrade.grading import BatchOutcome
from raygrade.protocol import GradeResult, GradingErrorItem, GradingJob, Usage
from raygrade.serve.job_registry import JobRegistryImpl


def job(n=2):
    return GradingJob.model_validate({
        "assessment": {"questions": [{"id": "q", "prompt": "p", "max_score": 1}]},
        "submissions": [{"student_id": f"s{i}", "pages": [{"type": "text", "text": "x"}]} for i in range(n)]})


def outcome(batch_id, students):
    return BatchOutcome(batch_id=batch_id, calls=1, usage=Usage(prompt_tokens=10, completion_tokens=2), errors=[],
                        results=[GradeResult(student_id=s, question_id="q", score=1, max_score=1, feedback="f",
                                             confidence=1, pages=[0], model="m", batch_id=batch_id,
                                             usage=Usage()) for s in students])


def test_idempotency_key():
    reg = JobRegistryImpl()
    st, created = reg.create(job(), "k")
    assert created
    again, created = reg.create(job(), "k")
    assert not created and again.id == st.id
    with pytest.raises(ConflictError):
        reg.create(job(3), "k")
    assert reg.create(job(), None)[0].id != st.id


def test_a_batch_recorded_twice_counts_once_and_states_follow_errors():
    reg = JobRegistryImpl()
    st, _ = reg.create(job(2))
    reg.start(st.id, students=2, items_total=2, batches_total=1, model="m")
    reg.add_outcome(st.id, outcome("b0", ["s0"]), "r1")
    reg.add_outcome(st.id, outcome("b0", ["s0"]), "r2")
    s = reg.status(st.id)
    assert s.progress.batches_done == 1 and s.progress.items_graded == 1 and s.usage.prompt_tokens == 10
    assert reg.replicas(st.id) == {"r1": 1}
    reg.add_errors(st.id, [GradingErrorItem(student_ids=["s1"], question_ids=["q"], type="planning_error",
                                            message="too big")])
    assert reg.finish(st.id).state.value == "partial"
    res = reg.results(st.id)
    assert [r.student_id for r in res.results] == ["s0"] and res.errors[0].type == "planning_error"


def test_finish_flags_the_least_confident_share_for_review():
    reg = JobRegistryImpl()
    j = job(4)
    j.options.review_share = 0.5
    st, _ = reg.create(j)
    out = outcome("b0", ["s0", "s1", "s2", "s3"])
    for r, c in zip(out.results, [0.9, 0.3, 0.6, 0.1]):
        r.confidence = c
    reg.add_outcome(st.id, out)
    assert reg.finish(st.id).progress.items_needs_review == 2
    flagged = {r.student_id for r in reg.results(st.id).results if r.needs_review}
    assert flagged == {"s1", "s3"}


def test_unknown_job_and_empty_outcomes():
    reg = JobRegistryImpl()
    with pytest.raises(NotFoundError):
        reg.status("job_x")
    st, _ = reg.create(job(1))
    assert reg.finish(st.id).state.value == "succeeded"
