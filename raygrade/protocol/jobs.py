"""What a grading job is made of: the assessment (questions, rubric, examples), submissions, options."""

from __future__ import annotations

import enum
import hashlib
from typing import Literal

from pydantic import Field, field_validator, model_validator

from raygrade.protocol._base import ShortStr, _Input, number
from raygrade.protocol.pages import FilePage, ImagePage, Page, StoredImage

#: Most pages of one student (once multi-page PDF and TIFF files are split into pages).
MAX_PAGES = 200
#: Most steps a question's score grid may have (``max_score / score_step``).
MAX_GRID_STEPS = 10_000
#: Points within which a score is on the grid (:meth:`Question.on_grid`); the grid's scores are
#: rounded to it, so neither ``max_score`` nor ``score_step`` may be smaller.
SCORE_RESOLUTION = 1e-6


class GradedExample(_Input):
    """An answer to the same question with its human grade, shown to the model for calibration."""

    answer: str = Field(max_length=20_000)
    score: float = number(ge=0)
    feedback: str | None = Field(default=None, max_length=20_000)


class Question(_Input):
    """One question of an assessment.

    ``max_score`` is in points; grades are in ``[0, max_score]``. ``score_step``
    (points) restricts grades to multiples of it, e.g. 0.5.
    """

    id: str = Field(min_length=1, max_length=128)
    prompt: str = Field(min_length=1, max_length=20_000)
    reference_answer: str | None = Field(default=None, max_length=50_000)
    rubric: str = Field(default="", max_length=50_000)
    max_score: float = number(gt=0, le=1000)
    score_step: float | None = number(default=None, gt=0)
    model_answer_images: list[ImagePage] = Field(default_factory=list, max_length=8)
    examples: list[GradedExample] = Field(default_factory=list, max_length=500)

    @model_validator(mode="after")
    def _check_examples(self) -> Question:
        for name in ("max_score", "score_step"):
            value = getattr(self, name)
            if value is not None and value < SCORE_RESOLUTION:
                raise ValueError(f"{name} {value:g} is below the score grid's resolution ({SCORE_RESOLUTION:g} points)")
        if self.score_step is not None:
            if self.score_step > self.max_score:
                raise ValueError(f"score_step {self.score_step:g} exceeds max_score {self.max_score:g}")
            n = self.max_score / self.score_step
            if n > MAX_GRID_STEPS + 0.5:
                raise ValueError(f"score_step {self.score_step:g} makes a grid of {n + 1:.0f} scores; "
                                 f"the limit is {MAX_GRID_STEPS + 1}")
            if abs(n - round(n)) > 1e-6 * max(1.0, n):
                raise ValueError(f"score_step {self.score_step} does not divide max_score {self.max_score} "
                                 "(the grid would pass the maximum)")
        for k, img in enumerate(self.model_answer_images):
            if img.media_type not in ("image/png", "image/jpeg"):
                raise ValueError(f"model_answer_images[{k}] must be a PNG or JPEG image (a page file of another "
                                 "format is accepted only in submissions)")
        for i, ex in enumerate(self.examples):
            if ex.score > self.max_score:
                raise ValueError(f"examples[{i}].score {ex.score} exceeds max_score {self.max_score}")
        return self

    def on_grid(self, score: float) -> bool:
        """Whether ``score`` (points, already in ``[0, max_score]``) is one of :meth:`allowed_scores`
        (to 1e-6); any score is when the question has no ``score_step``."""
        grid = self.allowed_scores()
        return grid is None or any(abs(score - g) < SCORE_RESOLUTION for g in grid)

    def allowed_scores(self) -> list[float] | None:
        """The grid of legal scores when ``score_step`` is set, else ``None``."""
        if self.score_step is None:
            return None
        n = int(round(self.max_score / self.score_step))
        grid = [round(i * self.score_step, 6) for i in range(n + 1)]
        if grid[-1] < self.max_score:
            grid.append(self.max_score)
        return grid


class Assessment(_Input):
    """A set of questions graded together, with optional title."""

    id: str | None = Field(default=None, max_length=128)
    title: str | None = Field(default=None, max_length=1000)
    questions: list[Question] = Field(min_length=1, max_length=200)

    @field_validator("questions")
    @classmethod
    def _unique_ids(cls, qs: list[Question]) -> list[Question]:
        seen: set[str] = set()
        for q in qs:
            if q.id in seen:
                raise ValueError(f"duplicate question id {q.id!r}")
            seen.add(q.id)
        return qs

    def question(self, qid: str) -> Question:
        """Return the question with id ``qid``. Raises ``KeyError`` if absent."""
        for q in self.questions:
            if q.id == qid:
                return q
        raise KeyError(qid)


class Submission(_Input):
    """One student's answer pages, in order.

    ``question_ids`` names the questions these pages answer (default: all of the
    assessment's questions).
    """

    student_id: str = Field(min_length=1, max_length=256)
    pages: list[Page] = Field(min_length=1, max_length=MAX_PAGES)
    question_ids: list[ShortStr] | None = Field(default=None, min_length=1, max_length=200)


class ReadingMode(str, enum.Enum):
    """How pages reach the model.

    - ``auto``: ``vision`` when the provider accepts images, else ``ocr``.
    - ``vision``: images go to a vision-language model as they are.
    - ``ocr``: images are read by OCR first and the text goes to the model.
    """

    AUTO = "auto"
    VISION = "vision"
    OCR = "ocr"

    def resolve(self, supports_vision: bool) -> ReadingMode:
        """This mode with ``auto`` decided for a provider that does (or does not) accept images."""
        if self is ReadingMode.AUTO:
            return ReadingMode.VISION if supports_vision else ReadingMode.OCR
        return self


class CompletionPolicy(_Input):
    """When a job is complete.

    ``rule="all"``: when every item is graded or has failed. ``rule="quorum"``: as soon
    as ``min_graded_share`` of the items are graded; items still pending then are
    cancelled (error type ``not_graded``). A quorum that failures make unreachable ends
    the job when every item is done, like ``"all"``.
    """

    rule: Literal["all", "quorum"] = "all"
    min_graded_share: float = number(default=1.0, gt=0, le=1)


class ReviewTarget(_Input):
    """Review as many items as a target agreement needs, instead of a fixed share.

    With ``metric: exact``, raygrade flags the fewest least confident items ``k`` such that the
    expected share of final scores equal to the teacher's, ``(k + Σ confidence of the others) / n``,
    reaches ``value``: the confidence is P(exact score), so each unreviewed item is expected right
    with its confidence and each reviewed one is right. With ``metric: qwk``, the fewest items of
    largest expected squared error such that the expected quadratic-weighted kappa between the
    final scores and the teacher's, per question and averaged over the questions, reaches
    ``value`` (:func:`raygrade.review.qwk_target_cut`). Either estimate is as good as the grader's
    calibration (``benchmarks/review_loop.py --target`` / ``--target-qwk`` measure what is reached).
    """

    metric: Literal["exact", "qwk"] = Field(default="exact", description=(
        "exact: the share of final scores equal to the teacher's; qwk: quadratic-weighted kappa with the "
        "teacher's scores, per question, averaged over the job's questions."))
    value: float = number(gt=0, le=1, description="The target, e.g. 0.9.")


class JobOptions(_Input):
    """Per-job options."""

    model: str | None = Field(default=None, min_length=1, max_length=256,
                              description="Model name; default: the deployment's.")
    reading_mode: ReadingMode = Field(default=ReadingMode.AUTO, description=(
        "How pages reach the model: auto (vision when the provider accepts images, else ocr), vision (images as "
        "they are) or ocr (OCR text)."))
    idempotency_key: str | None = Field(default=None, max_length=256, description=(
        "A retried POST with the same key (per tenant) returns the job it created instead of a second one."))
    temperature: float = number(default=0.0, ge=0, le=2, description="Sampling temperature of the model's calls.")
    review_share: float = number(default=0.0, ge=0, le=1, description=(
        "Share of graded items a human will review: those most at risk (review_by) are flagged needs_review."))
    review_by: Literal["expected_error", "confidence"] = Field(default="expected_error", description=(
        "What review_share ranks items by: expected_error (the grade's expected |score - the human's| as a share "
        "of the maximum; default) or confidence (P(exact score), least confident first)."))
    review_target: ReviewTarget | None = Field(default=None, description=(
        "Flag as many items (the least confident for exact, the largest expected errors for qwk) as the expected "
        "agreement needs to reach the target (instead of review_share; the share chosen is in the job's status)."))
    review_audit_share: float = number(default=0.0, ge=0, le=0.5, description=(
        "Share of graded items also flagged for review at random (an audit sample, besides review_share or "
        "review_target): the teacher's scores on them are unbiased evidence of how often the grader is right, "
        "from which the job's confidences are recalibrated (results' calibrated_confidence) and the review "
        "target's choice recomputed."))
    batch_across_jobs: bool = Field(default=False, description=(
        "Students of this job may share a provider request with the students of the same tenant's other jobs "
        "that grade the same questions with the same model, sent within the batcher's wait "
        "(batcher.share_wait_s): one-student jobs then do not each pay the request's prefix. Never across "
        "tenants; each job keeps its own results, usage and review flags."))
    completion: CompletionPolicy = Field(default_factory=CompletionPolicy, description=(
        "When the job is complete: rule 'all' (every item graded or failed) or 'quorum' (min_graded_share of the "
        "items graded; the rest cancelled as not_graded)."))
    webhook_url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://", description=(
        "POSTed the final JobStatus when the job ends, signed per Standard Webhooks (webhook-id, "
        "webhook-timestamp, webhook-signature: v1,base64(HMAC-SHA256(secret, id.timestamp.body))). "
        "http(s) only, no credentials; hosts must resolve to public addresses unless the server's "
        "webhook_allowed_networks lists them."))

    @model_validator(mode="after")
    def _one_review_rule(self) -> JobOptions:
        if self.review_target is not None and self.review_share > 0:
            raise ValueError("give review_share or review_target, not both")
        return self

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_url(cls, v: str | None) -> str | None:
        if v is not None:
            from raygrade.webhooks import check_url

            check_url(v)
        return v


class GradingJob(_Input):
    """The body of ``POST /v1/jobs``: one assessment and many students' submissions."""

    assessment: Assessment
    submissions: list[Submission] = Field(min_length=1, max_length=10_000)
    options: JobOptions = Field(default_factory=JobOptions)

    @model_validator(mode="after")
    def _check_refs(self) -> GradingJob:
        qids = {q.id for q in self.assessment.questions}
        seen: set[str] = set()
        for i, sub in enumerate(self.submissions):
            if sub.student_id in seen:
                raise ValueError(f"submissions[{i}]: duplicate student_id {sub.student_id!r}")
            seen.add(sub.student_id)
            for qid in sub.question_ids or []:
                if qid not in qids:
                    raise ValueError(f"submissions[{i}].question_ids: unknown question id {qid!r}")
        return self

    def has_images(self) -> bool:
        """Whether the job carries image bytes (pages or model-answer images): what the ingress
        must decode before it records the job."""
        return (any(isinstance(p, ImagePage) for sub in self.submissions for p in sub.pages)
                or any(q.model_answer_images for q in self.assessment.questions))

    def stored_pages(self) -> list[str]:
        """Where the job holds :class:`StoredImage` pages (``submissions[i].pages[k]``): raygrade's
        own references, which a client may not send."""
        return [f"submissions[{i}].pages[{k}]" for i, sub in enumerate(self.submissions)
                for k, p in enumerate(sub.pages) if isinstance(p, StoredImage)]

    def file_pages(self) -> list[tuple[int, int, FilePage]]:
        """The job's pages that name an uploaded file: ``(submission index, page index, page)``."""
        return [(i, k, p) for i, sub in enumerate(self.submissions) for k, p in enumerate(sub.pages)
                if isinstance(p, FilePage)]

    def request_hash(self) -> str:
        """SHA-256 (hex) of the job as validated from its caller's body (pages unresolved): the same
        request sent again hashes the same, whatever became of the files it names."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    def item_count(self) -> int:
        """Items (student × question) the job grades: what a tenant's ``items_per_day`` counts."""
        return sum(len(self.questions_for(sub)) for sub in self.submissions)

    def questions_for(self, sub: Submission) -> list[Question]:
        """The questions a submission answers, in assessment order."""
        if sub.question_ids is None:
            return list(self.assessment.questions)
        wanted = set(sub.question_ids)
        return [q for q in self.assessment.questions if q.id in wanted]


# ----------------------------------------------------------------------------- results
