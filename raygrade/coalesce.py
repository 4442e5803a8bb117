"""Small batches of different jobs in one provider request (``options.batch_across_jobs``).

A platform that sends each student as a job of its own pays a whole request's prefix
(instructions, rubric, reference answers) per student. Jobs that allow it get a ``share_key``
on their batches from the planner (:func:`raygrade.batch.share_key`: the tenant, model, sampling, prompt
version and questions; never two tenants), and the batcher's :class:`Coalescer` holds such a
batch for up to ``max_wait_s`` while batches with the same key arrive, then sends them as one
request (students renamed ``s1``…, pages as they are) within the per-request limits, and splits
the outcome back into one outcome per batch: its students' grades and errors, and a share of the
usage in proportion to its prompt estimate.

Each batch is still leased, completed and counted in the store on its own: the merged request is
only transport. A merged call that fails fails each of its batches the same way (a lost grader
re-dispatches each; an error inside the grader fails each batch's items with its type).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from raygrade.batch import BatchOutcome, GradeBatch
from raygrade.planner import JSON_OVERHEAD_TOKENS, BatchLimits
from raygrade.protocol import ImagePage, StoredImage, Usage

#: ``grade(batch)`` → the outcome and the grader replica that produced it.
GradeFn = Callable[[GradeBatch], Awaitable[tuple[BatchOutcome, str | None]]]


def _images(batch: GradeBatch) -> int:
    return sum(isinstance(p, (ImagePage, StoredImage)) for s in batch.students for p in s.pages)


def _merged_tokens(batches: list[GradeBatch]) -> tuple[int, int]:
    """(prompt, completion) token estimates of one request for ``batches``: the shared prefix and
    the answer's JSON punctuation counted once."""
    prompt = batches[0].prefix_tokens_estimate + sum(b.prompt_tokens_estimate - b.prefix_tokens_estimate
                                                     for b in batches)
    return prompt, JSON_OVERHEAD_TOKENS + sum(b.max_tokens - JSON_OVERHEAD_TOKENS for b in batches)


def merge(batches: list[GradeBatch]) -> GradeBatch:
    """One request for ``batches`` (same share key): students renamed ``s1``… in order, with ids
    ``"{k}:{student_id}"`` (``k``: the batch's index) so equal ids of two jobs stay apart; the prompt
    estimate counts the shared prefix once (``prefix_tokens_estimate``)."""
    first = batches[0]
    students, n = [], 0
    for k, b in enumerate(batches):
        for s in b.students:
            n += 1
            students.append(s.model_copy(update={"alias": f"s{n}", "student_id": f"{k}:{s.student_id}"}))
    prompt, completion = _merged_tokens(batches)
    return first.model_copy(update={
        "batch_id": "+".join(b.batch_id for b in batches)[:200], "students": students,
        "prompt_tokens_estimate": prompt, "max_tokens": completion,
        "image_tokens_estimate": sum(b.image_tokens_estimate for b in batches)})


def split(outcome: BatchOutcome, batches: list[GradeBatch]) -> list[BatchOutcome]:
    """``outcome`` of :func:`merge` (``batches``) as one outcome per batch: each gets the grades and
    errors of its own students (ids restored, its batch id), the usage in proportion to its prompt
    estimate (whole tokens, the remainder to the last), and the merged call's timings and warnings."""
    total = sum(b.prompt_tokens_estimate for b in batches) or 1
    out, given = [], Usage()
    for k, b in enumerate(batches):
        prefix = f"{k}:"
        results = [r.model_copy(update={"student_id": r.student_id[len(prefix):], "batch_id": b.batch_id})
                   for r in outcome.results if r.student_id.startswith(prefix)]
        errors = []
        for e in outcome.errors:
            mine = [s[len(prefix):] for s in e.student_ids if s.startswith(prefix)]
            if mine:
                errors.append(e.model_copy(update={"student_ids": mine, "batch_id": b.batch_id}))
        if k == len(batches) - 1:
            usage = Usage(prompt_tokens=outcome.usage.prompt_tokens - given.prompt_tokens,
                          completion_tokens=outcome.usage.completion_tokens - given.completion_tokens)
        else:
            share = b.prompt_tokens_estimate / total
            usage = Usage(prompt_tokens=round(outcome.usage.prompt_tokens * share),
                          completion_tokens=round(outcome.usage.completion_tokens * share))
            given = given + usage
        out.append(outcome.model_copy(update={
            "batch_id": b.batch_id, "results": results, "errors": errors, "usage": usage,
            "cached_prompt_tokens": round(outcome.cached_prompt_tokens * b.prompt_tokens_estimate / total),
            "calls": outcome.calls if k == 0 else 0}))
    return out


@dataclass
class _Group:
    key: str
    batches: list[GradeBatch] = field(default_factory=list)
    futures: list[asyncio.Future] = field(default_factory=list)
    timer: asyncio.Task | None = None


class Coalescer:
    """Holds batches with a ``share_key`` for up to ``max_wait_s`` and grades those that arrive
    meanwhile with the same key as one request, within ``limits``; any other batch is graded at
    once. A plain class: the clock is the injected ``sleep``.

    Args:
        grade: Grades one (possibly merged) batch.
        limits: The model's per-request budgets (students, images, completion, context window).
        max_wait_s: Longest a batch waits for others (its first arrival starts the wait).
        sleep: ``await sleep(seconds)``.
    """

    def __init__(self, grade: GradeFn, limits: BatchLimits, max_wait_s: float,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self._grade, self._limits, self._wait_s, self._sleep = grade, limits, max_wait_s, sleep
        self._open: dict[str, _Group] = {}
        self._tasks: set[asyncio.Task] = set()

    def _fits(self, batches: list[GradeBatch]) -> bool:
        """Whether :func:`merge` of ``batches`` keeps within the limits (its sums, without building it)."""
        lim, (prompt, completion) = self._limits, _merged_tokens(batches)
        return (sum(len(b.students) for b in batches) <= lim.max_students_per_request
                and completion <= lim.max_completion_tokens and prompt + completion <= lim.context_window
                and sum(_images(b) for b in batches) <= lim.max_images_per_request)

    async def grade(self, batch: GradeBatch) -> tuple[BatchOutcome, str | None]:
        """``batch``'s outcome and the replica that graded it; raises what grading its request raised."""
        key = batch.share_key
        if key is None or self._wait_s <= 0 or not self._fits([batch, batch]):
            return await self._grade(batch)  # not shareable, or nothing could join it
        group = self._open.get(key)
        if group is not None and not self._fits(group.batches + [batch]):
            self._flush(group)
            group = None
        if group is None:
            group = self._open[key] = _Group(key)
            group.timer = self._spawn(self._flush_after(group))
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        group.batches.append(batch)
        group.futures.append(fut)
        if not self._fits(group.batches + [batch]):  # full: nothing more of this size could join
            self._flush(group)
        return await fut

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _flush_after(self, group: _Group) -> None:
        await self._sleep(self._wait_s)
        self._flush(group)

    def _flush(self, group: _Group) -> None:
        """Send ``group`` now (once), closing it to new batches."""
        if self._open.get(group.key) is group:
            del self._open[group.key]
        if group.timer is not None and group.timer is not asyncio.current_task():
            group.timer.cancel()
        group.timer = None
        if group.batches:
            batches, futures = group.batches, group.futures
            group.batches, group.futures = [], []
            self._spawn(self._send(batches, futures))

    async def _send(self, batches: list[GradeBatch], futures: list[asyncio.Future]) -> None:
        try:
            if len(batches) == 1:  # nothing joined it: graded as it is
                outcome, replica = await self._grade(batches[0])
                outcomes = [outcome]
            else:
                outcome, replica = await self._grade(merge(batches))
                outcomes = split(outcome, batches)
        except BaseException as exc:
            for f in futures:
                if not f.done():
                    f.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for f, o in zip(futures, outcomes, strict=True):
            if not f.done():
                f.set_result((o, replica))
