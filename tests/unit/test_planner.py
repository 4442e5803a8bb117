"""The batch planner: whole students, budgets respected, always terminates."""

import pytest

from raygrade.planner import BatchLimits, StudentCost, plan_batches

LIMITS = BatchLimits(context_window=4000, max_completion_tokens=1000, max_images_per_request=4,
                     max_students_per_request=3)


def _check_partition(students, plan):
    seen = [i for b in plan.batches for i in b.students] + [r.index for r in plan.rejected]
    assert sorted(seen) == list(range(len(students))), "every student exactly once"


def test_empty_job_gives_empty_plan():
    plan = plan_batches([], LIMITS, 100)
    assert plan.batches == [] and plan.rejected == []


def test_uneven_page_counts_never_split_a_student():
    # page counts 1, 3, 2, 1, 4: images per request <= 4 forces several batches
    students = [StudentCost(f"s{i}", prompt_tokens=100 * p, completion_tokens=50, images=p)
                for i, p in enumerate([1, 3, 2, 1, 4])]
    plan = plan_batches(students, LIMITS, overhead_tokens=200)
    _check_partition(students, plan)
    assert not plan.rejected
    for b in plan.batches:
        assert b.images == sum(students[i].images for i in b.students) <= LIMITS.max_images_per_request
        assert len(b.students) <= LIMITS.max_students_per_request
        assert b.prompt_tokens == 200 + sum(students[i].prompt_tokens for i in b.students)
        assert b.prompt_tokens + b.completion_tokens <= LIMITS.context_window
    assert [list(b.students) for b in plan.batches] == [[0, 1], [2, 3], [4]]


def test_student_over_budget_is_rejected_and_the_rest_go_on():
    students = [
        StudentCost("ok1", 500, 100, 1),
        StudentCost("too-many-pages", 900, 100, images=9),        # more images than a request allows
        StudentCost("too-long", 3900, 100, 1),                    # prompt + completion > context
        StudentCost("too-much-output", 100, 5000, 1),             # completion > max_completion_tokens
        StudentCost("ok2", 500, 100, 1),
    ]
    plan = plan_batches(students, LIMITS, overhead_tokens=100)
    _check_partition(students, plan)
    assert [r.student_id for r in plan.rejected] == ["too-many-pages", "too-long", "too-much-output"]
    assert "images" in plan.rejected[0].reason and "context window" in plan.rejected[1].reason
    assert "completion" in plan.rejected[2].reason
    assert [list(b.students) for b in plan.batches] == [[0, 4]]


def test_more_pages_than_batch_size_terminates():
    # The seed design looped forever when one student had more pages than the batch size.
    lim = BatchLimits(context_window=10**6, max_completion_tokens=10**5, max_images_per_request=2,
                      max_students_per_request=1)
    students = [StudentCost(f"s{i}", 10, 10, images=5) for i in range(1000)]
    plan = plan_batches(students, lim)
    assert len(plan.rejected) == 1000 and plan.batches == []


def test_groups_are_packed_separately_with_their_own_overhead():
    students = [StudentCost("a", 100, 10, 0, group="q1"), StudentCost("b", 100, 10, 0, group="q2"),
                StudentCost("c", 100, 10, 0, group="q1")]
    plan = plan_batches(students, LIMITS, overhead_tokens={"q1": 1000, "q2": 50})
    by_group = {b.group: b for b in plan.batches}
    assert by_group["q1"].students == (0, 2) and by_group["q1"].prompt_tokens == 1200
    assert by_group["q2"].students == (1,) and by_group["q2"].prompt_tokens == 150


def test_overhead_counts_against_each_student_alone():
    students = [StudentCost("s", 3000, 500)]
    assert plan_batches(students, LIMITS, overhead_tokens=0).batches
    assert plan_batches(students, LIMITS, overhead_tokens=600).rejected


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        BatchLimits(context_window=0, max_completion_tokens=1, max_images_per_request=1, max_students_per_request=1)


def test_batches_say_which_part_of_their_prompt_is_images():
    """GradeBatch.image_tokens_estimate: the pages' and model answers' image tokens by the provider's
    rule (the limiter learns the provider's image count apart from its text count)."""
    import base64
    import io

    from PIL import Image

    from raygrade.config import ProviderConfig, RaygradeArgs
    from raygrade.planner import planner_for
    from raygrade.prompts import StudentWork
    from raygrade.protocol import GradingJob, ImagePage, TextPage
    from raygrade.tokens import image_tokens

    buf = io.BytesIO()
    Image.new("RGB", (1000, 900), "white").save(buf, format="PNG")
    page = ImagePage(data=base64.b64encode(buf.getvalue()).decode())
    args = RaygradeArgs(provider=ProviderConfig(base_url="http://x/v1", api_key_env=None, image_token_rule="gpt-4o"))
    job = GradingJob.model_validate({"assessment": {"questions": [
        {"id": "q1", "prompt": "Explain ARP.", "max_score": 1}]}, "submissions": [
        {"student_id": "a", "pages": [page.model_dump(), page.model_dump()]},
        {"student_id": "b", "pages": [{"type": "text", "text": "ARP maps IP to MAC."}]}]})
    works = [StudentWork(student_id=s.student_id, alias=f"s{i}", pages=list(s.pages),
                         page_indices=list(range(len(s.pages))), question_ids=["q1"])
             for i, s in enumerate(job.submissions)]
    batches, errors = planner_for(args).batches("j", job, works, vision=True)
    assert not errors
    per_page = image_tokens("gpt-4o", 1000, 900, "high")
    (b,) = batches
    assert b.image_tokens_estimate == 2 * per_page < b.prompt_tokens_estimate
    text_only, _ = planner_for(args).batches("j", job, works[1:], vision=True)
    assert text_only[0].image_tokens_estimate == 0 and isinstance(works[1].pages[0], TextPage)


def test_a_page_that_cannot_be_read_fails_its_student_alone():
    """A corrupt page reaching the planner (the API refuses it; a direct caller may not) is that
    student's ``reading_error``; the other students are planned."""
    import base64

    from raygrade.config import ProviderConfig, RaygradeArgs
    from raygrade.planner import planner_for
    from raygrade.prompts import StudentWork
    from raygrade.protocol import GradingJob

    bad = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4).decode()
    args = RaygradeArgs(provider=ProviderConfig(base_url="http://x/v1", api_key_env=None, image_token_rule="gpt-4o"))
    job = GradingJob.model_validate({"assessment": {"questions": [{"id": "q1", "prompt": "Why?", "max_score": 1}]},
                                     "submissions": [{"student_id": "bad", "pages": [{"type": "image", "data": bad}]},
                                                     {"student_id": "ok", "pages": [{"type": "text", "text": "x"}]}]})
    works = [StudentWork(student_id=s.student_id, alias=f"s{i}", pages=list(s.pages), page_indices=[0],
                         question_ids=["q1"]) for i, s in enumerate(job.submissions)]
    batches, errors = planner_for(args).batches("j", job, works, vision=True)
    assert [e.student_ids for e in errors] == [["bad"]] and errors[0].type == "reading_error"
    assert [s.student_id for b in batches for s in b.students] == ["ok"]


def test_students_that_no_request_can_hold_are_found_before_reading():
    """Issue 27: a student of 154,186 prompt tokens against a 16,000-token context was found only
    when the job was planned. ``unfit`` finds them from the pages' sizes: image pages by the
    provider's rule in vision mode, text pages always (OCR text is not known before reading);
    raygrade's images-per-request budget is left to the planner."""
    import base64
    import io

    from PIL import Image

    from raygrade.config import ProviderConfig, RaygradeArgs
    from raygrade.planner import planner_for
    from raygrade.protocol import GradingJob

    buf = io.BytesIO()
    Image.new("1", (2048, 2048), 1).save(buf, format="PNG")
    page = {"type": "image", "data": base64.b64encode(buf.getvalue()).decode()}
    args = RaygradeArgs(provider=ProviderConfig(base_url="http://x/v1", api_key_env=None, image_token_rule="gpt-4o",
                                                context_window=16_000))
    essay = {"type": "text", "text": "word " * 20_000}
    job = GradingJob.model_validate({"assessment": {"questions": [{"id": "q1", "prompt": "Why?", "max_score": 1}]},
                                     "submissions": [{"student_id": "ok", "pages": [page] * 8},       # 8 × 765 tokens
                                                     {"student_id": "thick", "pages": [page] * 25},  # 25 × 765 > 16,000
                                                     {"student_id": "essay", "pages": [essay]}]})
    planner = planner_for(args)
    unfit = planner.unfit(job, vision=True)
    assert [i for i, _ in unfit] == [1, 2]
    assert "the context window is 16000" in unfit[0][1] and unfit[0][1].startswith("needs ")
    assert [i for i, _ in planner.unfit(job, vision=False)] == [2], "images are read as text later: not counted"


def test_the_fit_check_runs_the_tokenizer_only_where_the_upper_bound_does_not_settle_it():
    """``unfit`` first counts by :data:`~raygrade.tokens.UPPER_BOUND` (no tokenizer); the provider's
    counter runs only for a student the bound cannot clear, and decides as before."""
    from raygrade.config import ProviderConfig, RaygradeArgs
    from raygrade.planner import planner_for
    from raygrade.protocol import GradingJob

    args = RaygradeArgs(provider=ProviderConfig(base_url="http://x/v1", api_key_env=None, context_window=16_000))
    planner = planner_for(args)
    counted: list[int] = []
    real = planner.counter

    class Counting:
        name = real.name

        def count(self, text: str) -> int:
            counted.append(len(text))
            return real.count(text)

    planner.counter = Counting()

    def job(*texts: str) -> GradingJob:
        return GradingJob.model_validate({
            "assessment": {"questions": [{"id": "q1", "prompt": "Why?", "max_score": 1}]},
            "submissions": [{"student_id": f"s{i}", "pages": [{"type": "text", "text": t}]}
                            for i, t in enumerate(texts)]})

    assert planner.unfit(job("A short answer.", "Another one."), vision=False) == [] and counted == []
    # ≈ 2,000 tokens in 10,000 bytes: over the bound's 16,000, under the window once counted; then an
    # essay of ≈ 20,000 tokens that does not fit.
    unfit = planner.unfit(job("short", "word " * 2_000, "word " * 20_000), vision=False)
    assert [i for i, _ in unfit] == [2] and "the context window is 16000" in unfit[0][1]
    assert counted, "the students the bound could not clear were counted"


@pytest.mark.parametrize("text", ["plain ASCII answer, with punctuation!", "数据包在网络之间转发", "😀🙃" * 50,
                                  "\ufdfa" * 20, "x" * 5000, "", " \n\t" * 40, "ﬁ ﬂ ㍿ ＡＢＣ"])
def test_the_upper_bound_is_above_the_tokenizers_count(text):
    from raygrade.tokens import UPPER_BOUND, TiktokenCounter

    assert UPPER_BOUND.count(text) >= TiktokenCounter().count(text)
