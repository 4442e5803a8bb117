"""Grading one batch: reserve budget, call the provider, check the output.

:class:`BatchGrader` is plain async code with its provider, limiter and sleep
injected, so it is unit-tested without Ray or a network; the Serve ``Grader``
deployment only wraps it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from raygrade.batch import BatchOutcome, GradeBatch, students_error
from raygrade.errors import (
    CircuitOpenError,
    OutputParseError,
    ProviderConnectionError,
    ProviderStatusError,
    ProviderTimeoutError,
    QuotaExhaustedError,
    RaygradeError,
)
from raygrade.evaluation import score_level
from raygrade.prompts import MAX_FEEDBACK_CHARS, ParsedGrade, StudentWork, build_messages, output_schema, parse_output
from raygrade.protocol import GradeResult, GradingErrorItem, Usage
from raygrade.providers.base import ChatProvider, ChatRequest, ChatResult
from raygrade.ratelimit.limiter import Outcome, Reservation, Settlement
from raygrade.retry import call_with_retries
from raygrade.review import miss_error, question_step
from raygrade.tracing import provider_span, span

logger = logging.getLogger(__name__)


class Limiter(Protocol):
    """What :class:`BatchGrader` needs from a limiter (``RateLimiter`` or ``ActorLimiter``)."""

    async def acquire(self, key: str, tokens: int, *, job: str | None = None,
                      prompt_tokens: int | None = None, image_tokens: int | None = None,
                      tenant: str | None = None, output_tokens: int | None = None,
                      patience_s: float | None = None) -> Reservation: ...

    async def settle(self, reservation: Reservation, settlement: Settlement) -> None: ...


def batch_request(batch: GradeBatch, students: list[StudentWork], *, max_tokens: int, bounds: bool = False,
                  feedback_max_chars: int = MAX_FEEDBACK_CHARS) -> ChatRequest:
    """The request grading ``students`` of ``batch`` (all of them, or those a re-ask carries) with a
    completion budget of ``max_tokens``: its chat messages and output JSON schema; ``bounds`` puts
    score ranges and the feedback's length (``feedback_max_chars``) in the schema."""
    messages = build_messages(batch.questions, students, include_model_answer_images=batch.include_model_answer_images)
    return ChatRequest(messages, max_tokens=max_tokens, temperature=batch.temperature,
                       json_schema=output_schema(batch.questions, students, bounds=bounds,
                                                 feedback_max_chars=feedback_max_chars), model=batch.model,
                       cache_key=prefix_cache_key(messages))


def prefix_cache_key(messages: list[dict[str, Any]]) -> str | None:
    """A key naming the shared prefix of a request's ``messages``: ``"rg-"`` + 24 hex digits of the
    SHA-256 of its system message (the instructions and the questions, the same for every batch of
    an assessment); ``None`` without a system message. Carries nothing readable of the prompt."""
    system = [m for m in messages[:1] if m.get("role") == "system"]
    if not system:
        return None
    return "rg-" + hashlib.sha256(json.dumps(system[0], sort_keys=True).encode()).hexdigest()[:24]


class UnmeteredLimiter:
    """A :class:`Limiter` that admits everything at once: for answers already obtained (the
    Batch API's output, replayed through :class:`BatchGrader`) or queues metered elsewhere."""

    async def acquire(self, key: str, tokens: int, **_: object) -> Reservation:
        return Reservation(0, key, tokens, 0.0, False)

    async def settle(self, reservation: Reservation, settlement: Settlement) -> None:
        return None


def send_delay(elapsed_s: float, headers: dict[str, str]) -> float | None:
    """Upper bound on when the provider counted a call, in seconds after it was granted:
    the response time minus the provider's ``openai-processing-ms`` (``None`` without it)."""
    try:
        return max(0.0, elapsed_s - float(headers["openai-processing-ms"]) / 1000.0)
    except (KeyError, ValueError):
        return None


def classify_outcome(exc: BaseException | None) -> Outcome:
    """How a provider call ended, for the limiter: a daily quota spent → ``quota_exhausted``;
    other 429s → ``rate_limited``; 5xx, timeouts
    and connection errors → ``failure`` (they count for the circuit breaker); other
    errors (4xx, unparsable responses) → ``client_error``; no error → ``ok``."""
    if exc is None:
        return "ok"
    if isinstance(exc, QuotaExhaustedError):
        return "quota_exhausted"
    if isinstance(exc, ProviderStatusError):
        if exc.provider_status == 429:
            return "rate_limited"
        return "failure" if exc.provider_status >= 500 else "client_error"
    if isinstance(exc, (ProviderTimeoutError, ProviderConnectionError)):
        return "failure"
    return "client_error"


class BatchGrader:
    """Grades batches through one provider under one rate limiter.

    Args:
        provider: The chat provider (``OpenAICompatibleProvider`` or a test double).
        limiter: The shared rate limiter (``ActorLimiter`` in Serve).
        bucket_key: The (provider, model) key to reserve under.
        max_retries: Transport retries per call (429, 5xx, timeouts).
        max_parse_retries: Re-asks for items whose output failed the schema.
        schema_bounds: Put numeric/length bounds in the JSON schema.
        feedback_max_chars: The feedback's length bound (characters) with ``schema_bounds``.
        retry_after_cap_s: Cap on a provider's ``Retry-After``.
        rate_limit_patience_s: Seconds a call keeps retrying after the provider's first 429
            (429s do not spend ``max_retries``; :func:`raygrade.retry.call_with_retries`).
        max_completion_tokens: The model's completion limit. Output truncated at
            ``max_tokens`` (``finish_reason="length"``) is re-asked split in two halves of
            the failed students while more than one is left; a single student's re-ask
            doubles ``max_tokens`` up to this cap.
        fallback: A grader (``async grade(GradeBatch) -> BatchOutcome``) for the items
            still pending while the provider's circuit breaker is open, e.g. the
            reference-similarity baseline; ``None`` reports them as ``circuit_open`` errors.
        calibration: A fitted :class:`~raygrade.calibration.ConfidenceCalibration`: each
            grade's raw confidence (of the map's source) becomes P(level right).
        agreement: A grader to compare levels with (the baseline): each grade's
            ``baseline_agrees`` is set where it could grade the item, and a calibration
            fitted with agreement uses the matching curve.
        sleep: Async sleep, injected in tests.
        clock: Monotonic seconds, injected in tests with ``sleep``.
    """

    def __init__(self, provider: ChatProvider, limiter: Limiter, *, bucket_key: str, max_retries: int = 3,
                 max_parse_retries: int = 2, schema_bounds: bool = False, retry_after_cap_s: float = 60.0,
                 feedback_max_chars: int = MAX_FEEDBACK_CHARS,
                 max_completion_tokens: int | None = None, fallback=None, calibration=None, agreement=None,
                 rate_limit_patience_s: float = 0.0, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self._provider, self._limiter = provider, limiter
        self._fallback = fallback
        self._calibration, self._agreement = calibration, agreement
        self._key = bucket_key
        self._max_retries, self._max_parse_retries = max_retries, max_parse_retries
        self._bounds, self._feedback_max_chars = schema_bounds, feedback_max_chars
        self._retry_after_cap_s = retry_after_cap_s
        self._max_completion_tokens = max_completion_tokens
        self._sleep, self._clock = sleep, clock
        self._patience_s = rate_limit_patience_s

    async def _call(self, batch: GradeBatch, students: list[StudentWork], max_tokens: int,
                    timing: dict[str, float] | None = None) -> ChatResult:
        """One request (with retries); adds seconds to ``timing["limiter"]`` and ``timing["provider"]``."""
        timing = timing if timing is not None else {"limiter": 0.0, "provider": 0.0, "grant_to_send": 0.0}
        request = batch_request(batch, students, max_tokens=max_tokens, bounds=self._bounds,
                                feedback_max_chars=self._feedback_max_chars)
        estimate = batch.prompt_tokens_estimate + max_tokens
        # The prompt estimate is the whole batch's: only a call carrying the whole batch teaches the
        # limiter the provider's count (a re-ask of a few students would look like an over-estimate).
        whole = len(students) == len(batch.students)
        prompt = batch.prompt_tokens_estimate if whole else None
        images = batch.image_tokens_estimate if whole else None

        async def attempt() -> ChatResult:
            t0 = time.monotonic()
            with span("raygrade.limiter.acquire", {"raygrade.limiter.key": self._key, "raygrade.tokens": estimate}):
                r = await self._limiter.acquire(self._key, estimate, job=batch.job_id, prompt_tokens=prompt,
                                                image_tokens=images, tenant=batch.tenant, output_tokens=max_tokens,
                                                patience_s=self._patience_s)
            granted = time.monotonic()
            timing["limiter"] += granted - t0
            # The grant's trip here is at most the round trip less the queueing the limiter reports.
            trip = max(0.0, granted - t0 - r.waited_s)
            try:
                with provider_span(request.model or batch.model) as call:
                    res = await self._provider.chat(request)
                    call.record(res.model, res.usage, res.finish_reason)
            except BaseException as exc:
                # A failed call keeps its estimate charged: hosted providers count
                # rejected and failed requests against the limit too.
                await self._limiter.settle(r, Settlement(
                    None, outcome=classify_outcome(exc), retry_after_s=getattr(exc, "retry_after_s", None),
                    headers=getattr(exc, "rate_limit_headers", None), quota_reset_at=getattr(exc, "reset_at", None)))
                raise
            finally:
                timing["provider"] += time.monotonic() - granted
            delay: float | None
            answer_s = None
            if res.sent_at is not None:  # measured: the request left this long after the grant
                measured = max(0.0, res.sent_at - granted)
                timing["grant_to_send"] = max(timing.get("grant_to_send", 0.0), measured)
                delay = measured
                # ... and was answered this long after leaving: the limiter bounds the whole delay
                # since *its* admission with it (the grant's own trip here included).
                answer_s = time.monotonic() - res.sent_at
            else:  # estimated from the provider's processing time, where it says
                delay = send_delay(time.monotonic() - granted, res.headers)
            with span("raygrade.limiter.settle"):
                await self._limiter.settle(r, Settlement(
                    res.usage.total_tokens if res.usage else None,
                    headers={k: v for k, v in res.headers.items() if k.startswith("x-ratelimit-")},
                    send_delay_s=delay, answer_s=answer_s, grant_trip_s=trip,
                    prompt_tokens=res.usage.prompt_tokens if res.usage and whole else None,
                    completion_tokens=res.usage.completion_tokens if res.usage else None,
                    cached_tokens=res.cached_tokens))
            return res

        return await call_with_retries(attempt, max_retries=self._max_retries,
                                       retry_after_cap_s=self._retry_after_cap_s,
                                       rate_limit_patience_s=self._patience_s, sleep=self._sleep, clock=self._clock)

    async def grade(self, batch: GradeBatch) -> BatchOutcome:
        """Grade every (student, question) item of ``batch``.

        Never raises for provider or output problems: items that could not be
        graded come back in ``errors`` with the error's type (``output_parse_error``,
        ``refusal``, ``timeout_error``, ``connection_error``, ``provider_error``,
        ``rate_limit_error``, ``circuit_open``, ...).
        """
        by_alias = {s.alias: s for s in batch.students}
        qmax = {q.id: q.max_score for q in batch.questions}
        usage = Usage()
        calls = cached = 0
        grades = []
        model_used = batch.model or ""
        errors: list[GradingErrorItem] = []
        fallback_results: list[GradeResult] = []
        # Work queue of (students, max_tokens, round). A re-ask carries only the items that
        # failed; output cut off at max_tokens is split in two (fewer students → shorter
        # output) while more than one student is left, else re-asked with twice the room.
        queue: list[tuple[list[StudentWork], int, int]] = [(list(batch.students), batch.max_tokens, 0)]
        timing = {"limiter": 0.0, "provider": 0.0, "grant_to_send": 0.0}
        while queue:
            pending, max_tokens, round_ = queue.pop(0)
            try:
                res = await self._call(batch, pending, max_tokens, timing)
            except RaygradeError as exc:
                if isinstance(exc, CircuitOpenError) and self._fallback is not None:
                    # The provider is failing: grade what is left with the fallback, marked as such.
                    fb = await self._fallback.grade(batch.model_copy(update={"students": pending}))
                    fallback_results += fb.results
                    errors += fb.errors
                    logger.info("batch %s: %d items graded by the fallback (circuit open)", batch.batch_id,
                                len(fb.results))
                else:
                    errors.append(students_error(pending, exc.error_type, exc.message, batch.batch_id))
                continue
            calls += 1
            cached += res.cached_tokens
            model_used = res.model
            if res.usage:
                usage = usage + res.usage
            refused = bool(res.refusal and not res.content)
            truncated = res.finish_reason == "length"
            got: list[ParsedGrade]
            if refused:
                got, invalid = [], {(s.alias, q): f"model refused: {(res.refusal or '')[:200]}"
                                    for s in pending for q in s.question_ids}
            else:
                got, invalid = parse_output(res.content, batch.questions, pending, token_logprobs=res.token_logprobs)
                if invalid and truncated:
                    invalid = {k: f"{v} (output truncated at max_tokens={max_tokens})" for k, v in invalid.items()}
            grades.extend(got)
            if not invalid:
                continue
            failed = []
            for alias in dict.fromkeys(a for a, _ in invalid):
                st = by_alias[alias]
                failed.append(st.model_copy(update={"question_ids": [q for q in st.question_ids
                                                                     if (alias, q) in invalid]}))
            if round_ < self._max_parse_retries:
                logger.info("batch %s: %d items failed the schema (round %d)", batch.batch_id, len(invalid), round_)
                if truncated and len(failed) > 1:
                    half = len(failed) // 2
                    queue += [(failed[:half], max_tokens, round_ + 1), (failed[half:], max_tokens, round_ + 1)]
                elif truncated:
                    queue.append((failed, min(2 * max_tokens, self._max_completion_tokens or 2 * max_tokens),
                                  round_ + 1))
                else:
                    queue.append((failed, max_tokens, round_ + 1))
                continue
            etype = "refusal" if refused else OutputParseError.error_type
            for (alias, qid), reason in invalid.items():
                errors.append(GradingErrorItem(student_ids=[by_alias[alias].student_id], question_ids=[qid],
                                               type=etype, message=reason, batch_id=batch.batch_id))
        n = max(1, len(grades))
        share = Usage(prompt_tokens=usage.prompt_tokens // n, completion_tokens=usage.completion_tokens // n)
        step = {q.id: question_step(q) for q in batch.questions}
        results = [GradeResult(
            student_id=by_alias[g.alias].student_id, question_id=g.question_id, score=g.score,
            max_score=qmax[g.question_id], feedback=g.feedback,
            confidence=(p := g.score_prob if g.score_prob is not None else g.confidence),
            expected_error=miss_error(p, step[g.question_id]),
            confidence_source="score_logprob" if g.score_prob is not None else "self_reported",
            pages=by_alias[g.alias].page_indices, model=model_used, batch_id=batch.batch_id, usage=share,
        ) for g in grades]
        if results and (self._agreement is not None or self._calibration is not None):
            results = await self._calibrate(batch, results)
        results += fallback_results
        return BatchOutcome(batch_id=batch.batch_id, results=results, errors=errors, usage=usage, calls=calls,
                            cached_prompt_tokens=cached,
                            limiter_wait_s=timing["limiter"], provider_s=timing["provider"],
                            grant_to_send_s=timing["grant_to_send"])

    async def _calibrate(self, batch: GradeBatch, results: list[GradeResult]) -> list[GradeResult]:
        """Set ``baseline_agrees`` (when an agreement grader is given) and calibrated confidences."""
        agrees: dict[tuple[str, str], bool] = {}
        if self._agreement is not None:
            graded = {(r.student_id, r.question_id) for r in results}
            students = [s.model_copy(update={"question_ids": [q for q in s.question_ids
                                                              if (s.student_id, q) in graded]})
                        for s in batch.students]
            try:
                ref = await self._agreement.grade(batch.model_copy(update={"students": [s for s in students
                                                                                         if s.question_ids]}))
            except Exception:  # the comparison is optional: grades stand without it
                logger.exception("batch %s: baseline comparison failed", batch.batch_id)
            else:
                levels = {(r.student_id, r.question_id): score_level(r.score, r.max_score) for r in ref.results}
                agrees = {(r.student_id, r.question_id): levels[(r.student_id, r.question_id)]
                          == score_level(r.score, r.max_score)
                          for r in results if (r.student_id, r.question_id) in levels}
        cal = self._calibration
        step = {q.id: question_step(q) for q in batch.questions}
        out = []
        for r in results:
            a = agrees.get((r.student_id, r.question_id))
            update: dict = {"baseline_agrees": a}
            if cal is not None and r.confidence_source == cal.source:
                c = cal.calibrate(r.confidence, a)
                update |= {"confidence": c, "confidence_calibrated": True,
                           "expected_error": miss_error(c, step[r.question_id])}
            out.append(r.model_copy(update=update))
        return out
