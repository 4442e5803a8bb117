"""BatchGrader with an in-process provider double: retries, schema checks, per-item errors."""

import asyncio
import json

import pytest

from raygrade.batch import GradeBatch
from raygrade.config import RateLimitConfig
from raygrade.errors import ProviderStatusError, RateLimitedError
from raygrade.grading import BatchGrader
from raygrade.prompts import StudentWork, build_messages, output_schema, parse_output
from raygrade.protocol import Question, TextPage, Usage
from raygrade.providers.base import ChatResult
from raygrade.ratelimit.limiter import RateLimiter

Q = [Question(id="q1", prompt="Name a TCP header field.", max_score=1, reference_answer="sequence number"),
     Question(id="q2", prompt="What does UDP lack?", max_score=2, score_step=0.5)]


def work(i, qids=("q1", "q2")):
    return StudentWork(student_id=f"student-{i}", alias=f"s{i}", pages=[TextPage(text=f"answer {i}")],
                       page_indices=[0], question_ids=list(qids))


def batch(n=2):
    return GradeBatch(batch_id="b1", job_id="j1", questions=Q, students=[work(i) for i in range(1, n + 1)],
                      prompt_tokens_estimate=100, max_tokens=200)


def good(students, score=0.5):
    return {s.alias: {q: {"feedback": "ok", "score": score, "confidence": 0.9} for q in s.question_ids}
            for s in students}


class ScriptedProvider:
    """Returns the scripted answers in order; each is a dict (JSON), a str (raw), or an exception."""

    def __init__(self, script):
        self.script = list(script)
        self.calls = []

    async def chat(self, request):
        self.calls.append({"messages": request.messages, "schema": request.json_schema})
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        if callable(item):
            item = item(request.json_schema)
        content = item if isinstance(item, str) else json.dumps(item)
        return ChatResult(content=content, finish_reason="stop", usage=Usage(prompt_tokens=80, completion_tokens=20),
                          model="m", headers={})


class NoSleep:
    """Records sleeps and advances a virtual clock instead of waiting."""

    def __init__(self):
        self.slept = []
        self.now = 0.0

    async def __call__(self, s):
        self.slept.append(s)
        self.now += s

    def clock(self):
        return self.now


def grader(provider, sleep=None, limits=None, **kw):
    sleep = sleep or NoSleep()
    lim = RateLimiter(clock=sleep.clock, sleep=sleep)
    lim.configure("p/m", limits or RateLimitConfig(tpm=10_000, burst_s=None))  # pacing: test_pacer.py
    return BatchGrader(provider, lim, bucket_key="p/m", sleep=sleep, **kw), lim


def test_happy_path_maps_aliases_back_and_splits_usage():
    b = batch()
    g, lim = grader(ScriptedProvider([good(b.students)]))
    out = asyncio.run(g.grade(b))
    assert not out.errors and out.calls == 1
    assert {(r.student_id, r.question_id) for r in out.results} == {
        ("student-1", "q1"), ("student-1", "q2"), ("student-2", "q1"), ("student-2", "q2")}
    assert out.usage.total_tokens == 100 and all(r.usage.prompt_tokens == 20 for r in out.results)
    assert lim.snapshot()["p/m"]["tokens_available"] == 10_000 - 100, "settled with actual usage"


def test_student_ids_never_reach_the_provider():
    b = batch()
    p = ScriptedProvider([good(b.students)])
    asyncio.run(grader(p)[0].grade(b))
    sent = json.dumps(p.calls[0])
    assert "student-1" not in sent and '"s1"' in sent


def test_schema_invalid_output_is_reasked_only_for_failed_items():
    b = batch()

    def partial(schema):
        d = good(b.students)
        d["s2"]["q2"]["score"] = 7          # above max_score 2
        del d["s1"]["q1"]                   # missing
        return d

    p = ScriptedProvider([partial, lambda schema: {a: {q: {"feedback": "f", "score": 1, "confidence": 0.5}
                                                       for q in v["properties"]}
                                                   for a, v in schema["properties"].items()}])
    out = asyncio.run(grader(p)[0].grade(b))
    assert not out.errors and len(out.results) == 4 and out.calls == 2
    second = p.calls[1]["schema"]["properties"]
    assert set(second) == {"s1", "s2"} and list(second["s1"]["properties"]) == ["q1"]
    assert list(second["s2"]["properties"]) == ["q2"]


def test_persistently_invalid_output_becomes_per_item_errors():
    b = batch(1)
    p = ScriptedProvider(["not json at all"] * 3)
    out = asyncio.run(grader(p, max_parse_retries=2)[0].grade(b))
    assert out.results == [] and out.calls == 3
    assert {(e.student_ids[0], e.question_ids[0], e.type) for e in out.errors} == {
        ("student-1", "q1", "output_parse_error"), ("student-1", "q2", "output_parse_error")}


def test_retry_after_is_honoured_then_success():
    b = batch(1)
    sleep = NoSleep()
    p = ScriptedProvider([RateLimitedError("429", provider_status=429, retry_after_s=3.0),
                          ProviderStatusError("502", provider_status=502), good(b.students)])
    g, lim = grader(p, sleep=sleep)
    out = asyncio.run(g.grade(b))
    assert not out.errors and len(out.results) == 2
    assert sleep.slept[0] == 3.0 and len(sleep.slept) == 2
    snap = lim.snapshot()["p/m"]
    assert snap["rate_limited"] == 1 and snap["failures"] == 1, "outcomes reach the shared limiter"


def test_an_open_circuit_breaker_stops_retries_and_is_reported():
    b = batch(1)
    p = ScriptedProvider([ProviderStatusError("503", provider_status=503), good(b.students)])
    g, lim = grader(p, limits=RateLimitConfig(tpm=10_000, breaker_failure_threshold=1, breaker_cooldown_s=600))
    out = asyncio.run(g.grade(b))
    assert len(p.calls) == 1, "nothing is sent while the breaker is open"
    assert [e.type for e in out.errors] == ["circuit_open"]


def test_non_retryable_provider_error_is_reported_for_the_batch():
    b = batch(2)
    p = ScriptedProvider([ProviderStatusError("400", provider_status=400)])
    out = asyncio.run(grader(p)[0].grade(b))
    assert out.results == [] and len(out.errors) == 1
    assert out.errors[0].type == "provider_error" and out.errors[0].student_ids == ["student-1", "student-2"]


def test_output_schema_forces_every_item_and_bounds():
    ws = [work(1), work(2, ("q2",))]
    s = output_schema(Q, ws, bounds=True)
    assert s["required"] == ["s1", "s2"]
    assert s["properties"]["s2"]["required"] == ["q2"]
    assert s["properties"]["s1"]["properties"]["q1"]["properties"]["score"] == {"type": "number", "minimum": 0,
                                                                               "maximum": 1}
    assert s["properties"]["s1"]["properties"]["q2"]["properties"]["score"] == {"enum": [0, 0.5, 1, 1.5, 2]}


def test_the_feedback_bound_comes_from_the_provider_config_and_only_with_schema_bounds():
    """``feedback_max_chars`` is the feedback's ``maxLength`` in every request a grader sends (the
    engine's grammar enforces it); without ``schema_bounds`` no length is sent."""
    from raygrade.graders import build_batch_grader
    from raygrade.prompts import MAX_FEEDBACK_CHARS
    from raygrade.testing.fake_openai import fake_provider_config

    def feedback_schemas(cfg):
        provider = ScriptedProvider([good(batch().students)])
        g, _ = grader(provider, schema_bounds=cfg.schema_bounds, feedback_max_chars=cfg.feedback_max_chars)
        out = asyncio.run(g.grade(batch()))
        assert not out.errors
        schema = provider.calls[0]["schema"]
        return [schema["properties"][a]["properties"][q]["properties"]["feedback"] for a in ("s1", "s2")
                for q in ("q1", "q2")]

    cfg = fake_provider_config("http://127.0.0.1:9/v1", schema_bounds=True)
    assert cfg.feedback_max_chars == MAX_FEEDBACK_CHARS
    assert feedback_schemas(cfg) == [{"type": "string", "maxLength": MAX_FEEDBACK_CHARS}] * 4
    short = cfg.model_copy(update={"feedback_max_chars": 40})
    assert feedback_schemas(short) == [{"type": "string", "maxLength": 40}] * 4
    assert build_batch_grader(short, RateLimiter())._feedback_max_chars == 40  # wired from the config
    assert feedback_schemas(short.model_copy(update={"schema_bounds": False})) == [{"type": "string"}] * 4


def test_parse_rejects_off_grid_and_bad_confidence():
    ws = [work(1)]
    d = good(ws)
    d["s1"]["q2"]["score"] = 0.7
    d["s1"]["q1"]["confidence"] = 2
    grades, invalid = parse_output(json.dumps(d), Q, ws)
    assert grades == [] and set(invalid) == {("s1", "q1"), ("s1", "q2")}


def test_messages_put_pages_in_order():
    w = StudentWork(student_id="x", alias="s1", pages=[TextPage(text="first"), TextPage(text="second")],
                    page_indices=[0, 1], question_ids=["q1"])
    msgs = build_messages(Q[:1], [w])
    text = msgs[1]["content"]
    assert isinstance(text, str) and text.index("[Page 1]\nfirst") < text.index("[Page 2]\nsecond")


class TruncatingProvider(ScriptedProvider):
    """Truncates its answer unless max_tokens is at least ``need``."""

    def __init__(self, need):
        super().__init__([])
        self.need = need

    async def chat(self, request):
        max_tokens, json_schema = request.max_tokens, request.json_schema
        self.calls.append({"max_tokens": max_tokens})
        full = json.dumps({a: {q: {"feedback": "f", "score": 1, "confidence": 0.5} for q in v["properties"]}
                           for a, v in json_schema["properties"].items()})
        if max_tokens < self.need:
            return ChatResult(content=full[:10], finish_reason="length", usage=Usage(completion_tokens=max_tokens),
                              model="m", headers={})
        return ChatResult(content=full, finish_reason="stop", usage=Usage(completion_tokens=50), model="m", headers={})


def test_truncated_output_is_reasked_with_a_larger_budget_up_to_the_cap():
    b = batch(1)  # max_tokens=200
    p = TruncatingProvider(need=700)
    out = asyncio.run(grader(p, max_completion_tokens=1000)[0].grade(b))
    assert [c["max_tokens"] for c in p.calls] == [200, 400, 800] and not out.errors

    p = TruncatingProvider(need=10_000)
    out = asyncio.run(grader(p, max_completion_tokens=300, max_parse_retries=2)[0].grade(b))
    assert [c["max_tokens"] for c in p.calls] == [200, 300, 300]
    assert len(out.errors) == 2 and "truncated at max_tokens=300" in out.errors[0].message


class PerStudentBudgetProvider(TruncatingProvider):
    """Truncates unless max_tokens covers ``need`` tokens per student in the request."""

    async def chat(self, request):
        max_tokens, json_schema = request.max_tokens, request.json_schema
        n = len(json_schema["properties"])
        self.calls.append({"max_tokens": max_tokens, "students": sorted(json_schema["properties"])})
        full = json.dumps({a: {q: {"feedback": "f", "score": 1, "confidence": 0.5} for q in v["properties"]}
                           for a, v in json_schema["properties"].items()})
        if max_tokens < self.need * n:
            return ChatResult(content=full[:10], finish_reason="length", usage=Usage(completion_tokens=max_tokens),
                              model="m", headers={})
        return ChatResult(content=full, finish_reason="stop", usage=Usage(completion_tokens=50), model="m", headers={})


def test_truncated_output_of_several_students_is_split_into_smaller_requests():
    b = batch(4)  # max_tokens=200; the answer needs 90 tokens per student
    p = PerStudentBudgetProvider(need=90)
    out = asyncio.run(grader(p, max_completion_tokens=200)[0].grade(b))
    assert not out.errors and len(out.results) == 8
    assert [c["students"] for c in p.calls] == [["s1", "s2", "s3", "s4"], ["s1", "s2"], ["s3", "s4"]]
    assert {c["max_tokens"] for c in p.calls} == {200}


def test_a_refusal_is_reported_per_item_as_refusal():
    b = batch(1)
    refusal = ChatResult(content=None, refusal="I can't help with that.", finish_reason="stop", usage=Usage(),
                         model="m", headers={})

    class Refusing(ScriptedProvider):
        async def chat(self, request):
            self.calls.append({})
            return refusal

    p = Refusing([])
    out = asyncio.run(grader(p, max_parse_retries=1)[0].grade(b))
    assert len(p.calls) == 2 and not out.results
    assert {(e.type, e.question_ids[0]) for e in out.errors} == {("refusal", "q1"), ("refusal", "q2")}
    assert "can't help" in out.errors[0].message


def test_score_probability_from_token_logprobs():
    import math

    from raygrade.prompts import score_probabilities

    content = '{"s1": {"q1": {"feedback": "says \\"score\\": 2", "score": 0.5, "confidence": 0.9}}}'
    toks = [(ch, math.log(0.5) if ch in "05." else 0.0) for ch in content]
    # The escaped "score" inside the feedback is text; only the real score's "0", ".", "5" count.
    p = score_probabilities(content, toks)
    assert len(p) == 1 and abs(p[0] - 0.125) < 1e-12
    assert score_probabilities(content, toks[:-1]) is None, "tokens that do not spell the content"
    assert score_probabilities(content, [*toks, ("<|im_end|>", -0.1)]) == p, "an end-of-turn token is allowed"
    assert score_probabilities(content, None) is None


def test_grades_take_their_confidence_from_score_logprobs_when_given():
    import math

    b = batch(1)
    content = json.dumps(good(b.students))

    class LogprobProvider(ScriptedProvider):
        async def chat(self, request):
            res = await super().chat(request)
            res.token_logprobs = [(ch, math.log(0.8) if ch in "0.5" else 0.0) for ch in res.content]
            return res

    out = asyncio.run(grader(LogprobProvider([content]))[0].grade(b))
    assert {r.confidence_source for r in out.results} == {"score_logprob"}
    assert all(abs(r.confidence - 0.8 ** 3) < 1e-9 for r in out.results), "P('0') P('.') P('5')"
    plain = asyncio.run(grader(ScriptedProvider([content]))[0].grade(b))
    assert {(r.confidence_source, r.confidence) for r in plain.results} == {("self_reported", 0.9)}
    # a miss is at least one step: q1 (max 1, no step) has three levels, q2 steps of 0.5
    assert {(r.question_id, round(r.expected_error, 9)) for r in plain.results} == {("q1", 0.05), ("q2", 0.05)}


def test_items_go_to_the_fallback_while_the_breaker_is_open():
    from raygrade.batch import BatchOutcome
    from raygrade.protocol import GradeResult

    class Baseline:
        def __init__(self):
            self.seen = []

        async def grade(self, b):
            self.seen.append([s.student_id for s in b.students])
            return BatchOutcome(batch_id=b.batch_id, errors=[], usage=Usage(), calls=0, results=[GradeResult(
                student_id=s.student_id, question_id=q, score=1, max_score=2, feedback="baseline", confidence=0.6,
                confidence_source="reference_similarity", pages=[0], model="reference-similarity",
                batch_id=b.batch_id, usage=Usage()) for s in b.students for q in s.question_ids])

    b = batch(2)
    base = Baseline()
    p = ScriptedProvider([ProviderStatusError("503", provider_status=503)])
    limits = RateLimitConfig(tpm=10_000, breaker_failure_threshold=1, breaker_cooldown_s=600)
    g, _ = grader(p, limits=limits, fallback=base)
    out = asyncio.run(g.grade(b))
    assert not out.errors and len(out.results) == 4 and base.seen == [["student-1", "student-2"]]
    assert {r.model for r in out.results} == {"reference-similarity"} and len(p.calls) == 1


def test_fallback_to_baseline_is_wired_from_the_provider_config():
    from raygrade.baseline.similarity import ReferenceSimilarityGrader
    from raygrade.graders import build_batch_grader
    from raygrade.testing.fake_openai import fake_provider_config

    cfg = fake_provider_config("http://127.0.0.1:9/v1", fallback_to_baseline=True)
    assert isinstance(build_batch_grader(cfg, RateLimiter())._fallback, ReferenceSimilarityGrader)
    assert build_batch_grader(cfg.model_copy(update={"fallback_to_baseline": False}), RateLimiter())._fallback is None


def test_charges_leave_the_window_from_when_the_request_was_sent():
    """The provider reports when the request left (the HTTP hook); the limiter is told the delay."""
    import time as _time

    class Spy(RateLimiter):
        delays: list = []

        async def settle(self, reservation, settlement):
            self.delays.append(settlement.send_delay_s)
            await super().settle(reservation, settlement)

    class LateSender(ScriptedProvider):
        async def chat(self, request):
            res = await super().chat(request)
            res.sent_at = _time.monotonic() + 2.0  # left two seconds after the grant (a busy replica)
            return res

    b = batch()
    lim = Spy()
    lim.configure("p/m", RateLimitConfig(tpm=10_000))
    g = BatchGrader(LateSender([good(b.students)]), lim, bucket_key="p/m", sleep=NoSleep())
    out = asyncio.run(g.grade(b))
    assert not out.errors and lim.delays[0] == pytest.approx(2.0, abs=0.2)
    assert out.grant_to_send_s == pytest.approx(2.0, abs=0.2)


def test_cached_prompt_tokens_are_summed_and_free_of_the_input_budget():
    """Prompt-cache reads reach the outcome (the cached_prompt token metric) and the limiter, whose
    input-token budget (itpm) does not count them."""
    b = batch(1)

    class Cached(ScriptedProvider):
        async def chat(self, request):
            res = await super().chat(request)
            res.cached_tokens = 60  # of the 80 prompt tokens
            return res

    g, lim = grader(Cached([good(b.students)]), limits=RateLimitConfig(itpm=1_000, otpm=1_000))
    out = asyncio.run(g.grade(b))
    assert not out.errors and out.cached_prompt_tokens == 60 and out.usage.prompt_tokens == 80
    snap = lim.snapshot()["p/m"]
    assert snap["input_tokens_available"] == 1_000 - 20 and snap["output_tokens_available"] == 1_000 - 20
