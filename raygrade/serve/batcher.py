"""``Batcher``: turns an accepted job into token-budgeted grading requests.

For each job it reads the pages (OCR for text-only models), estimates every
student's tokens, plans batches with :func:`raygrade.batching.plan_batches`
(never splitting a student), sends the batches to the ``Grader`` deployment
with bounded concurrency, and records outcomes in the ``JobRegistry``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os

from ray import serve

from raygrade.batching import BatchLimits, StudentCost, plan_batches
from raygrade.config import RaygradeArgs
from raygrade.errors import PlanningError, RaygradeError, ReadingError
from raygrade.grading import BatchOutcome, GradeBatch, students_error
from raygrade.prompts import SYSTEM_PROMPT, StudentWork, page_header, question_section, student_header
from raygrade.protocol import GradingErrorItem, GradingJob, ImagePage, Question, ReadingMode, TextPage
from raygrade.tokens import TokenCounter, counter_for, image_tokens

logger = logging.getLogger(__name__)

#: Tokens a chat template adds per message, and for JSON punctuation in the answer.
CHAT_OVERHEAD_TOKENS = 16
JSON_OVERHEAD_TOKENS = 32


def image_size(page: ImagePage) -> tuple[int, int]:
    """(width, height) in pixels, from the image header only."""
    from PIL import Image

    with Image.open(io.BytesIO(page.image_bytes())) as im:
        return im.size


class JobPlanner:
    """Token estimates and plans for one provider (plain code, no Ray).

    Args:
        args: The application's arguments (provider, batcher budgets).
        counter: Token counter of the provider's model.
    """

    def __init__(self, args: RaygradeArgs, counter: TokenCounter):
        self.args, self.counter = args, counter
        p, b = args.provider, args.batcher
        self.limits = BatchLimits(context_window=p.context_window, max_completion_tokens=p.max_completion_tokens,
                                  max_images_per_request=b.max_images_per_request,
                                  max_students_per_request=b.max_students_per_request)

    def _image_tokens(self, page: ImagePage) -> int:
        w, h = image_size(page)
        return image_tokens(self.args.provider.image_token_rule, w, h, self.args.provider.image_detail)

    def student_cost(self, work: StudentWork, group: tuple[str, ...]) -> StudentCost:
        """Estimated prompt tokens, completion budget and images of one student."""
        text = student_header(work.alias) + f" (answers questions: {', '.join(work.question_ids)})"
        tokens, images = 0, 0
        for n, page in enumerate(work.pages, 1):
            text += "\n" + page_header(n)
            if isinstance(page, TextPage):
                text += "\n" + page.text
            else:
                tokens += self._image_tokens(page)
                images += 1
        tokens += self.counter.count(text)
        completion = len(work.question_ids) * self.args.batcher.completion_tokens_per_item
        return StudentCost(work.student_id, tokens, completion, images, group)

    def overhead(self, questions: list[Question], vision: bool) -> int:
        """Prompt tokens every request carrying ``questions`` pays (system prompt, questions)."""
        n = self.counter.count(SYSTEM_PROMPT) + self.counter.count(question_section(questions))
        n += CHAT_OVERHEAD_TOKENS + JSON_OVERHEAD_TOKENS
        if vision:
            n += sum(self._image_tokens(img) for q in questions for img in q.model_answer_images)
        return n

    def batches(self, job_id: str, job: GradingJob, works: list[StudentWork], vision: bool
                ) -> tuple[list[GradeBatch], list[GradingErrorItem]]:
        """Plan ``works`` into :class:`GradeBatch` es plus per-student planning errors."""
        by_group: dict[tuple[str, ...], list[Question]] = {}
        costs = []
        for w in works:
            group = tuple(w.question_ids)
            if group not in by_group:
                by_group[group] = [job.assessment.question(q) for q in group]
            costs.append(self.student_cost(w, group))
        overheads = {g: self.overhead(qs, vision) for g, qs in by_group.items()}
        plan = plan_batches(costs, self.limits, overheads)
        errors = [GradingErrorItem(student_ids=[r.student_id], question_ids=list(works[r.index].question_ids),
                                   type=PlanningError.error_type, message=f"student {r.reason}")
                  for r in plan.rejected]
        batches = []
        for k, pb in enumerate(plan.batches):
            batches.append(GradeBatch(
                batch_id=f"{job_id}-b{k:05d}", job_id=job_id, questions=by_group[pb.group],
                students=[works[i] for i in pb.students], prompt_tokens_estimate=pb.prompt_tokens,
                max_tokens=pb.completion_tokens + JSON_OVERHEAD_TOKENS, model=job.options.model,
                temperature=job.options.temperature, include_model_answer_images=vision))
        return batches, errors


def planner_for(args: RaygradeArgs, model_dir: str | None = None) -> JobPlanner:
    """The planner for ``args``, counting with the model's own tokenizer from ``model_dir``
    when given; an ``hf`` tokenizer with no path to load falls back to tiktoken."""
    provider = args.provider
    if model_dir is None and provider.tokenizer == "hf" and provider.tokenizer_path is None:
        provider = provider.model_copy(update={"tokenizer": "tiktoken"})
    return JobPlanner(args, counter_for(provider, model_dir))


@serve.deployment(name="Batcher", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=100, num_replicas=1)
class Batcher:
    """Runs accepted jobs in the background of this replica.

    Args:
        args: Application arguments.
        registry: ``JobRegistry`` handle.
        reader: ``PageReader`` handle (OCR).
        grader: ``Grader`` handle.
        engine: ``LocalVLLMServer`` handle, or ``None`` for remote providers.
    """

    def __init__(self, args: RaygradeArgs, registry, reader, grader, engine=None):
        self._args = args
        self._registry, self._reader, self._grader, self._engine = registry, reader, grader, engine
        self._planner: JobPlanner | None = None
        self._tasks: set[asyncio.Task] = set()

    async def _get_planner(self) -> JobPlanner:
        if self._planner is None:
            path = None
            if self._engine is not None:
                path = (await self._engine.info.remote())["model_dir"]
                if not os.path.isdir(path):  # engine on another node: estimate with tiktoken
                    path = None
            self._planner = await asyncio.to_thread(planner_for, self._args, path)
        return self._planner

    async def submit(self, job_id: str) -> None:
        """Start grading ``job_id`` in the background and return at once."""
        task = asyncio.create_task(self._run(job_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _mode(self, job: GradingJob) -> ReadingMode:
        mode = job.options.reading_mode
        if mode == ReadingMode.AUTO:
            return ReadingMode.VISION if self._args.provider.supports_vision else ReadingMode.OCR
        return mode

    async def _read(self, job: GradingJob, mode: ReadingMode
                    ) -> tuple[list[StudentWork], list[GradingErrorItem]]:
        """Build each student's :class:`StudentWork`, OCR-ing image pages in OCR mode."""
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> StudentWork:
            sub = job.submissions[i]
            pages: list[TextPage | ImagePage] = []
            for page in sub.pages:
                if isinstance(page, ImagePage) and mode == ReadingMode.OCR:
                    async with sem:
                        text = await self._reader.read.remote(page.image_bytes())
                    pages.append(TextPage(text=text))
                else:
                    pages.append(page)
            return StudentWork(student_id=sub.student_id, alias=f"s{i + 1}", pages=pages,
                               page_indices=list(range(len(sub.pages))),
                               question_ids=[q.id for q in job.questions_for(sub)])

        works, errors = [], []
        outs = await asyncio.gather(*(one(i) for i in range(len(job.submissions))), return_exceptions=True)
        for sub, out in zip(job.submissions, outs):
            if isinstance(out, BaseException):
                # Ray re-raises a replica's exception as a subclass of the original type.
                err = out if isinstance(out, RaygradeError) else ReadingError(f"reading failed: {type(out).__name__}")
                errors.append(GradingErrorItem(student_ids=[sub.student_id],
                                               question_ids=[q.id for q in job.questions_for(sub)],
                                               type=err.error_type, message=getattr(err, "message", str(err))))
            else:
                works.append(out)
        return works, errors

    async def _run(self, job_id: str) -> None:
        reg = self._registry
        try:
            job: GradingJob = await reg.get_job.remote(job_id)
            mode = self._mode(job)
            planner = await self._get_planner()
            works, read_errors = await self._read(job, mode)
            batches, plan_errors = await asyncio.to_thread(
                planner.batches, job_id, job, works, mode == ReadingMode.VISION)
            items = sum(len(job.questions_for(s)) for s in job.submissions)
            await reg.start.remote(job_id, students=len(job.submissions), items_total=items,
                                   batches_total=len(batches), model=job.options.model or self._args.provider.model)
            if read_errors or plan_errors:
                await reg.add_errors.remote(job_id, read_errors + plan_errors)
            sem = asyncio.Semaphore(self._args.batcher.max_concurrent_batches)
            await asyncio.gather(*(self._grade(job_id, b, sem) for b in batches))
            status = await reg.finish.remote(job_id)
            logger.info("job %s %s: %d batches", job_id, status.state.value, len(batches))
        except Exception as exc:  # the job fails as a whole; the service keeps going
            logger.exception("job %s failed", job_id)
            err = exc if isinstance(exc, RaygradeError) else RaygradeError(f"internal error: {type(exc).__name__}")
            await reg.finish.remote(job_id, GradingErrorItem(student_ids=[], question_ids=[], type=err.error_type,
                                                             message=err.message))

    async def _grade(self, job_id: str, batch: GradeBatch, sem: asyncio.Semaphore) -> None:
        async with sem:
            try:
                outcome, replica = await self._grader.grade.remote(batch)
            except Exception as exc:  # replica died or the call failed outside BatchGrader
                logger.warning("batch %s failed: %s", batch.batch_id, type(exc).__name__)
                outcome, replica = BatchOutcome(
                    batch_id=batch.batch_id, results=[], usage={}, calls=0, errors=[students_error(
                        batch.students, getattr(exc, "error_type", "grader_error"),
                        f"grader call failed: {type(exc).__name__}", batch.batch_id)]), None
            await self._registry.add_outcome.remote(job_id, outcome, replica)
