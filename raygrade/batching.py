"""The batch planner: packs whole students into token-budgeted requests.

A pure function, no I/O: :func:`plan_batches` takes each student's estimated
cost and the model's budgets and returns batches of student indices plus the
students that cannot fit any request. Students are never split across
requests. The loop consumes one student per step, so it always terminates
(the seed design looped forever on a student with more pages than the batch
size).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class StudentCost:
    """Estimated cost of one student's work in a request.

    Attributes:
        student_id: The student's id.
        prompt_tokens: Tokens of the student's pages (text and images) in the prompt.
        completion_tokens: Completion budget for the student's items.
        images: Number of images the student contributes.
        group: Students are only packed with others of the same group (e.g. the
            same set of questions, since the prompt carries those questions).
    """

    student_id: str
    prompt_tokens: int
    completion_tokens: int
    images: int = 0
    group: Hashable = None


@dataclasses.dataclass(frozen=True)
class BatchLimits:
    """A model's per-request budgets (tokens, images, students)."""

    context_window: int
    max_completion_tokens: int
    max_images_per_request: int
    max_students_per_request: int

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if getattr(self, f.name) <= 0:
                raise ValueError(f"{f.name} must be positive")


@dataclasses.dataclass(frozen=True)
class PlannedBatch:
    """One request: indices into the planner's input, and its summed estimates."""

    students: tuple[int, ...]
    prompt_tokens: int
    completion_tokens: int
    images: int
    group: Hashable = None


@dataclasses.dataclass(frozen=True)
class Rejected:
    """A student that alone exceeds a budget, with the reason (no student text)."""

    index: int
    student_id: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Plan:
    batches: list[PlannedBatch]
    rejected: list[Rejected]


def _too_big(s: StudentCost, overhead: int, lim: BatchLimits) -> str | None:
    prompt = overhead + s.prompt_tokens
    if s.completion_tokens > lim.max_completion_tokens:
        return (f"needs {s.completion_tokens} completion tokens; the model allows "
                f"{lim.max_completion_tokens} per request")
    if prompt + s.completion_tokens > lim.context_window:
        return (f"needs {prompt} prompt + {s.completion_tokens} completion tokens; "
                f"the context window is {lim.context_window}")
    if s.images > lim.max_images_per_request:
        return f"has {s.images} images; at most {lim.max_images_per_request} fit one request"
    return None


def plan_batches(students: Sequence[StudentCost], limits: BatchLimits,
                 overhead_tokens: Mapping[Hashable, int] | int = 0) -> Plan:
    """Pack students, in order, into as few requests as the budgets allow.

    Greedy next-fit per group: a student joins the open batch of its group when
    every budget still holds, otherwise that batch is closed and a new one opens.
    Order within a group is kept, so plans are deterministic.

    Args:
        students: Per-student cost estimates.
        limits: The model's budgets.
        overhead_tokens: Prompt tokens every request of a group carries (system
            prompt, questions, rubric, examples): one int for all, or per group.

    Returns:
        A :class:`Plan`. Every input index is in exactly one batch or in ``rejected``.
        An empty input gives an empty plan.
    """
    def overhead(group: Hashable) -> int:
        return overhead_tokens if isinstance(overhead_tokens, int) else overhead_tokens.get(group, 0)

    batches: list[PlannedBatch] = []
    rejected: list[Rejected] = []
    open_: dict[Hashable, list[int]] = {}  # group -> indices of its open batch

    def close(group: Hashable) -> None:
        idx = open_.pop(group, None)
        if idx:
            batches.append(PlannedBatch(
                students=tuple(idx),
                prompt_tokens=overhead(group) + sum(students[i].prompt_tokens for i in idx),
                completion_tokens=sum(students[i].completion_tokens for i in idx),
                images=sum(students[i].images for i in idx),
                group=group,
            ))

    for i, s in enumerate(students):
        reason = _too_big(s, overhead(s.group), limits)
        if reason is not None:
            rejected.append(Rejected(i, s.student_id, reason))
            continue
        cur = open_.get(s.group, [])
        cand = cur + [i]
        prompt = overhead(s.group) + sum(students[j].prompt_tokens for j in cand)
        completion = sum(students[j].completion_tokens for j in cand)
        fits = (len(cand) <= limits.max_students_per_request
                and completion <= limits.max_completion_tokens
                and prompt + completion <= limits.context_window
                and sum(students[j].images for j in cand) <= limits.max_images_per_request)
        if fits:
            open_[s.group] = cand
        else:
            close(s.group)
            open_[s.group] = [i]
    for group in list(open_):
        close(group)
    return Plan(batches=batches, rejected=rejected)
