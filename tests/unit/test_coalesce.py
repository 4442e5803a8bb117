"""Small batches of different jobs in one provider request (``raygrade.coalesce``), on a virtual
clock: merging within the wait and the per-request limits, splitting the outcome back, failures
reaching every batch, and whole jobs through the dispatcher and a real store."""

from __future__ import annotations

import asyncio

import pytest
from support.clock import VirtualClock
from test_dispatch import Grader, clock, drive, make_job, registry, store  # noqa: F401  (fixtures)
from test_dispatch import dispatcher as make_dispatcher

from raygrade.batch import BatchOutcome, GradeBatch, share_key
from raygrade.coalesce import Coalescer, merge, split
from raygrade.errors import OutputParseError
from raygrade.planner import BatchLimits, batch_key
from raygrade.prompts import StudentWork
from raygrade.protocol import GradeResult, GradingErrorItem, JobState, Question, TextPage, Usage

Q = [Question(id="q1", prompt="Name a TCP header field.", max_score=2)]
LIMITS = BatchLimits(context_window=8000, max_completion_tokens=2000, max_images_per_request=4,
                     max_students_per_request=3)


def one_student(job: str, tenant: str = "school-a", student: str = "alice") -> GradeBatch:
    b = GradeBatch(batch_id=f"{job}-b", job_id=job, questions=Q, tenant=tenant, prefix_tokens_estimate=300,
                   students=[StudentWork(student_id=student, alias="s1", pages=[TextPage(text=f"{job} answer")],
                                         page_indices=[0], question_ids=["q1"])],
                   prompt_tokens_estimate=340, max_tokens=32 + 160)
    return b.model_copy(update={"share_key": share_key(b)})


def answer(batch: GradeBatch, fail_alias: str | None = None) -> BatchOutcome:
    """What a grader returns for ``batch``: a grade per student, or an error for ``fail_alias``."""
    ok = [s for s in batch.students if s.alias != fail_alias]
    bad = [s for s in batch.students if s.alias == fail_alias]
    return BatchOutcome(
        batch_id=batch.batch_id, calls=1, usage=Usage(prompt_tokens=1000, completion_tokens=90),
        results=[GradeResult(student_id=s.student_id, question_id="q1", score=1, max_score=2, feedback="ok",
                             confidence=0.8, pages=[0], model="m", batch_id=batch.batch_id, usage=Usage())
                 for s in ok],
        errors=[GradingErrorItem(student_ids=[s.student_id for s in bad], question_ids=["q1"],
                                 type="output_parse_error", message="bad", batch_id=batch.batch_id)] if bad else [])


class Recorder:
    def __init__(self, fail_alias=None, raises=None):
        self.sent: list[GradeBatch] = []
        self.fail_alias, self.raises = fail_alias, raises

    async def __call__(self, batch):
        self.sent.append(batch)
        await asyncio.sleep(0)
        if self.raises is not None:
            raise self.raises
        return answer(batch, self.fail_alias), "replica-1"


def test_batches_arriving_within_the_wait_share_one_request_and_get_their_own_outcomes():
    vc, grader = VirtualClock(), Recorder(fail_alias="s2")
    co = Coalescer(grader, LIMITS, max_wait_s=0.05, sleep=vc.sleep)
    batches = [one_student(f"job{k}") for k in range(3)]  # three jobs, each with a student called alice

    async def main():
        tasks = [asyncio.ensure_future(co.grade(b)) for b in batches[:2]]
        await vc.advance(0.01)
        assert not grader.sent, "held for the others"
        tasks.append(asyncio.ensure_future(co.grade(batches[2])))
        await vc.settle()
        assert len(grader.sent) == 1 and vc.now == 0.01 + 1000.0, "full (3 students): sent without waiting"
        return await asyncio.gather(*tasks)

    outcomes = asyncio.run(main())
    [sent] = grader.sent
    assert [s.alias for s in sent.students] == ["s1", "s2", "s3"]
    assert [s.student_id for s in sent.students] == ["0:alice", "1:alice", "2:alice"]
    assert sent.prompt_tokens_estimate == 300 + 3 * 40 and sent.max_tokens == 32 + 3 * 160
    for b, (o, replica) in zip(batches, outcomes, strict=True):
        assert o.batch_id == b.batch_id and replica == "replica-1"
        assert all(r.batch_id == b.batch_id and r.student_id == "alice" for r in o.results)
    assert [len(o.results) for o, _ in outcomes] == [1, 0, 1]
    assert outcomes[1][0].errors[0].student_ids == ["alice"] and outcomes[1][0].errors[0].batch_id == "job1-b"
    assert sum(o.usage.prompt_tokens for o, _ in outcomes) == 1000
    assert sum(o.usage.completion_tokens for o, _ in outcomes) == 90
    assert sum(o.calls for o, _ in outcomes) == 1


def test_tenants_never_share_and_limits_cut_a_group():
    vc, grader = VirtualClock(), Recorder()
    co = Coalescer(grader, LIMITS, max_wait_s=0.05, sleep=vc.sleep)
    other_tenant = one_student("jobX", tenant="school-b")
    assert other_tenant.share_key != one_student("job0").share_key

    async def main():
        tasks = [asyncio.ensure_future(co.grade(one_student(f"job{k}"))) for k in range(4)]
        tasks.append(asyncio.ensure_future(co.grade(other_tenant)))
        await vc.advance(0.1)
        return await asyncio.gather(*tasks)

    asyncio.run(main())
    sizes = sorted((b.tenant, len(b.students)) for b in grader.sent)
    assert sizes == [("school-a", 1), ("school-a", 3), ("school-b", 1)]  # at most 3 students a request


def test_a_batch_without_a_share_key_goes_at_once_and_a_failed_request_fails_every_batch():
    vc, grader = VirtualClock(), Recorder()
    co = Coalescer(grader, LIMITS, max_wait_s=0.05, sleep=vc.sleep)
    alone = one_student("solo").model_copy(update={"share_key": None})

    async def main():
        return await co.grade(alone)

    outcome, _ = asyncio.run(main())
    assert outcome.batch_id == "solo-b" and len(grader.sent) == 1 and grader.sent[0] is alone

    failing = Coalescer(Recorder(raises=OutputParseError("schema")), LIMITS, max_wait_s=0.05, sleep=vc.sleep)

    async def both():
        tasks = [asyncio.ensure_future(failing.grade(one_student(f"job{k}"))) for k in range(2)]
        await vc.advance(0.1)
        return await asyncio.gather(*tasks, return_exceptions=True)

    assert [type(e) for e in asyncio.run(both())] == [OutputParseError, OutputParseError]


def test_split_restores_each_batch_even_when_the_merged_ids_look_alike():
    batches = [one_student("a", student="7"), one_student("b", student="17")]
    m = merge(batches)
    assert [s.student_id for s in m.students] == ["0:7", "1:17"]
    parts = split(answer(m), batches)
    assert [[r.student_id for r in p.results] for p in parts] == [["7"], ["17"]]


@pytest.mark.parametrize("share", [True, False])
def test_one_student_jobs_that_allow_it_are_graded_in_one_request_and_stored_apart(store, registry, clock,  # noqa: F811
                                                                                  share):
    async def plan(job_id, job, tenant):
        w = [StudentWork(student_id=s.student_id, alias="s1", pages=[TextPage(text="x")], page_indices=[0],
                         question_ids=["q1", "q2"]) for s in job.submissions]
        b = GradeBatch(batch_id=batch_key(job_id, [x.student_id for x in w], ["q1", "q2"], None), job_id=job_id,
                       questions=job.assessment.questions, students=w, prompt_tokens_estimate=110,
                       prefix_tokens_estimate=100, max_tokens=64, tenant=tenant)
        return [b.model_copy(update={"share_key": share_key(b) if share else None})], [], "m"

    async def main():
        grader = Grader()
        co = Coalescer(grader, LIMITS, max_wait_s=0.05, sleep=clock.sleep)
        d = make_dispatcher(registry, clock, co.grade, plan=plan)
        ids = [store.create_job(make_job(1))[0].id for _ in range(3)]
        tasks = [d.submit(j) for j in ids]
        for t in tasks:
            await drive(t, clock, step_s=0.05)
        return ids, grader

    ids, grader = asyncio.run(main())
    assert sum(grader.calls.values()) == (1 if share else 3)
    for job_id in ids:
        st = store.status(job_id)
        assert st.state == JobState.SUCCEEDED and st.progress.items_graded == 2
        res = store.results(job_id).results
        assert {r.student_id for r in res} == {"s0"} and all(r.batch_id.startswith(job_id) for r in res)


def test_the_planner_keys_batches_of_jobs_that_allow_sharing_by_tenant_and_assessment():
    from raygrade.config import ProviderConfig, RaygradeArgs
    from raygrade.planner import planner_for
    from raygrade.protocol import GradingJob

    planner = planner_for(RaygradeArgs(provider=ProviderConfig(base_url="http://x/v1", api_key_env=None)))

    def planned(job_id, tenant, share=True, prompt="Explain ARP."):
        job = GradingJob.model_validate({
            "assessment": {"questions": [{"id": "q1", "prompt": prompt, "max_score": 1}]},
            "submissions": [{"student_id": "a", "pages": [{"type": "text", "text": "ARP maps IP to MAC."}]}],
            "options": {"batch_across_jobs": share}})
        works = [StudentWork(student_id="a", alias="s1", pages=list(job.submissions[0].pages), page_indices=[0],
                             question_ids=["q1"])]
        [b], _ = planner.batches(job_id, job, works, False, tenant)
        return b

    a1, a2 = planned("j1", "school-a"), planned("j2", "school-a")
    assert a1.share_key is not None and a1.share_key == a2.share_key and a1.batch_id != a2.batch_id
    assert 0 < a1.prefix_tokens_estimate < a1.prompt_tokens_estimate
    assert planned("j3", "school-b").share_key != a1.share_key  # never across tenants
    assert planned("j4", "school-a", prompt="Explain NAT.").share_key != a1.share_key
    assert planned("j5", "school-a", share=False).share_key is None  # off by default
