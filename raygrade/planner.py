"""The batch planner: estimates each student's tokens and packs whole students into requests.

One module for everything planning needs, used by the online ``Batcher``, bulk regrades,
benchmarks and tests alike (plain code: no Ray, no network):

- :func:`plan_batches`, the packer: a pure function taking each student's estimated cost
  and the model's budgets, returning batches of student indices plus the students that
  cannot fit any request. Students are never split across requests; the loop consumes
  one student per step, so it always terminates.
- :class:`JobPlanner` / :func:`planner_for`: the cost estimates (text tokens by the
  provider's tokenizer, image tokens by its rule from :func:`image_size`, prompt overheads)
  and :class:`raygrade.batch.GradeBatch` es with deterministic ids (:func:`batch_key`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import cast

from raygrade.batch import GradeBatch, share_key
from raygrade.blobs import image_size as blob_image_size
from raygrade.config import RaygradeArgs
from raygrade.errors import PlanningError, ReadingError
from raygrade.prompts import PROMPT_VERSION, SYSTEM_PROMPT, StudentWork, page_header, question_section, student_header
from raygrade.protocol import (
    GradingErrorItem,
    GradingJob,
    ImagePage,
    Question,
    StoredImage,
    TextPage,
    resolved,
)
from raygrade.tokens import UPPER_BOUND, TokenCounter, counter_for, image_tokens


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
        image_tokens: The images' part of ``prompt_tokens``.
    """

    student_id: str
    prompt_tokens: int
    completion_tokens: int
    images: int = 0
    group: Hashable = None
    image_tokens: int = 0


@dataclasses.dataclass(frozen=True)
class BatchLimits:
    """A model's per-request budgets (tokens, images, students)."""

    context_window: int
    max_completion_tokens: int
    max_images_per_request: int
    max_students_per_request: int

    @classmethod
    def of(cls, args: RaygradeArgs) -> BatchLimits:
        """The budgets of ``args``' provider (context window, completion limit) and batcher."""
        p, b = args.provider, args.batcher
        return cls(context_window=p.context_window, max_completion_tokens=p.max_completion_tokens,
                   max_images_per_request=b.max_images_per_request,
                   max_students_per_request=b.max_students_per_request)

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


def batch_key(job_id: str, student_ids: Iterable[str], question_ids: Iterable[str], model: str | None,
              prompt_version: str = PROMPT_VERSION) -> str:
    """Deterministic batch id: the same job, students, questions, model and prompt give the same id."""
    h = hashlib.sha256(json.dumps([job_id, sorted(student_ids), sorted(question_ids), model or "", prompt_version])
                       .encode()).hexdigest()[:16]
    return f"{job_id}-{h}"


#: Tokens a chat template adds per message, and for JSON punctuation in the answer.
CHAT_OVERHEAD_TOKENS = 16
JSON_OVERHEAD_TOKENS = 32


def image_size(page: ImagePage | StoredImage) -> tuple[int, int]:
    """(width, height) in pixels: recorded with a stored page, else from the image header only.

    Raises:
        ValueError: an inline image Pillow cannot identify.
    """
    if isinstance(page, StoredImage):
        return page.width, page.height
    return blob_image_size(page.image_bytes())


class JobPlanner:
    """Token estimates and plans for one provider (plain code, no Ray).

    Args:
        args: The application's arguments (provider, batcher budgets).
        counter: Token counter of the provider's model.
    """

    def __init__(self, args: RaygradeArgs, counter: TokenCounter):
        self.args, self.counter = args, counter
        self.limits = BatchLimits.of(args)

    def _image_tokens(self, page: ImagePage | StoredImage) -> int:
        w, h = image_size(page)
        p = self.args.provider
        return image_tokens(p.image_token_rule, w, h, p.image_detail, model_dir=p.tokenizer_path)

    def student_cost(self, work: StudentWork, group: tuple[str, ...], counter: TokenCounter | None = None
                     ) -> StudentCost:
        """Estimated prompt tokens, completion budget and images of one student (text counted by
        ``counter``, the provider's by default)."""
        text = student_header(work.alias) + f" (answers questions: {', '.join(work.question_ids)})"
        tokens, images = 0, 0
        for n, page in enumerate(work.pages, 1):
            text += "\n" + page_header(n)
            if isinstance(page, TextPage):
                text += "\n" + page.text
            else:
                tokens += self._image_tokens(page)
                images += 1
        image_tokens = tokens
        tokens += (counter or self.counter).count(text)
        completion = len(work.question_ids) * self.args.batcher.completion_tokens_per_item
        return StudentCost(work.student_id, tokens, completion, images, group, image_tokens)

    def overhead(self, questions: list[Question], vision: bool, counter: TokenCounter | None = None
                 ) -> tuple[int, int]:
        """Prompt tokens every request carrying ``questions`` pays (system prompt, questions,
        model-answer images in vision mode), and the images' part of them."""
        count = (counter or self.counter).count
        n = count(SYSTEM_PROMPT) + count(question_section(questions))
        n += CHAT_OVERHEAD_TOKENS + JSON_OVERHEAD_TOKENS
        images = sum(self._image_tokens(img) for q in questions for img in q.model_answer_images) if vision else 0
        return n + images, images

    def unfit(self, job: GradingJob, vision: bool) -> list[tuple[int, str]]:
        """Submissions no request can hold, from what is known before any page is read:
        ``(index, reason)`` per student whose pages (in ``vision`` mode every page, image pages by
        the provider's image-token rule; otherwise text pages only, since OCR text is not known
        yet), questions and completion budget pass the model's context window or its completion
        limit (what :meth:`batches` would reject as ``planning_error`` after reading). raygrade's
        own packing budget (``max_images_per_request``) is left to :meth:`batches`.

        Raises:
            ValueError: a page or model-answer image whose size cannot be read.
        """
        overheads: dict[tuple[str, tuple[str, ...]], int] = {}  # (counter, group) → overhead
        model_limits = dataclasses.replace(self.limits, max_images_per_request=sys.maxsize)
        out = []
        for i, sub in enumerate(job.submissions):
            qs = job.questions_for(sub)
            group = tuple(q.id for q in qs)
            pages = [resolved(p) for p in sub.pages if vision or isinstance(p, TextPage)]
            work = StudentWork(student_id=sub.student_id, alias=f"s{i + 1}", pages=pages,
                               page_indices=list(range(len(pages))), question_ids=list(group))
            for counter in (UPPER_BOUND, self.counter):  # most students fit by the bound: no tokenizer
                if (key := (counter.name, group)) not in overheads:
                    overheads[key] = self.overhead(qs, vision, counter)[0]
                if not (reason := _too_big(self.student_cost(work, group, counter), overheads[key], model_limits)):
                    break
            else:
                out.append((i, cast(str, reason)))
        return out

    def batches(self, job_id: str, job: GradingJob, works: list[StudentWork], vision: bool, tenant: str = ""
                ) -> tuple[list[GradeBatch], list[GradingErrorItem]]:
        """Plan ``works`` into :class:`GradeBatch` es plus per-student errors: a student who fits
        no request (``planning_error``), or whose pages, or whose questions' model-answer images,
        cannot be read (``reading_error``); the rest of the job is planned as usual."""
        by_group: dict[tuple[str, ...], list[Question]] = {}
        both: dict[tuple[str, ...], tuple[int, int] | Exception] = {}
        costs, planned, errors = [], [], []

        def unreadable(w: StudentWork, what: str, exc: Exception) -> GradingErrorItem:
            return GradingErrorItem(student_ids=[w.student_id], question_ids=list(w.question_ids),
                                    type=ReadingError.error_type, message=f"{what} cannot be read ({exc})")

        for w in works:
            group = tuple(w.question_ids)
            if group not in by_group:
                by_group[group] = [job.assessment.question(q) for q in group]
                try:
                    both[group] = self.overhead(by_group[group], vision)
                except ValueError as exc:  # a model-answer image (the API checks them; a direct caller may not)
                    both[group] = exc
            if isinstance(overhead := both[group], Exception):
                errors.append(unreadable(w, "a model-answer image of this student's questions", overhead))
                continue
            try:
                costs.append(self.student_cost(w, group))
            except ValueError as exc:  # a page image that cannot be read fails its student alone
                errors.append(unreadable(w, "a page of this student", exc))
                continue
            planned.append(w)
        works = planned
        image_overheads = {g: o[1] for g, o in both.items() if not isinstance(o, Exception)}
        overheads: dict[Hashable, int] = {g: o[0] for g, o in both.items() if not isinstance(o, Exception)}
        plan = plan_batches(costs, self.limits, overheads)
        errors += [GradingErrorItem(student_ids=[r.student_id], question_ids=list(works[r.index].question_ids),
                                    type=PlanningError.error_type, message=f"student {r.reason}")
                   for r in plan.rejected]
        batches = []
        for pb in plan.batches:
            group = cast(tuple[str, ...], pb.group)  # the question ids this planner grouped by
            batches.append(GradeBatch(
                # Deterministic (job, students, questions, model, prompt version): a re-planned
                # job gets the same ids, so the store inserts nothing twice.
                batch_id=batch_key(job_id, [works[i].student_id for i in pb.students], group,
                                   job.options.model or self.args.provider.model),
                job_id=job_id, questions=by_group[group],
                students=[works[i] for i in pb.students], prompt_tokens_estimate=pb.prompt_tokens,
                image_tokens_estimate=image_overheads[group] + sum(costs[i].image_tokens for i in pb.students),
                max_tokens=pb.completion_tokens + JSON_OVERHEAD_TOKENS, model=job.options.model,
                temperature=job.options.temperature, include_model_answer_images=vision, tenant=tenant,
                prefix_tokens_estimate=overheads[group]))
        if job.options.batch_across_jobs:  # raygrade.coalesce may send them with other jobs' batches
            batches = [b.model_copy(update={"share_key": share_key(b)}) for b in batches]
        return batches, errors



def planner_for(args: RaygradeArgs, model_dir: str | None = None) -> JobPlanner:
    """The planner for ``args``, counting with the model's own tokenizer from ``model_dir``
    (default: the provider's ``tokenizer_path``). An ``hf`` tokenizer with no folder to load
    (none given, or a local folder absent on this node, as when the model's replica runs
    elsewhere) falls back to tiktoken's estimate; the provider's usage settles the budget."""
    provider = args.provider
    path = model_dir or provider.tokenizer_path
    if provider.tokenizer == "hf" and (path is None or (os.path.isabs(path) and not os.path.isdir(path))):
        provider, path = provider.model_copy(update={"tokenizer": "tiktoken"}), None
    return JobPlanner(args, counter_for(provider, path))
