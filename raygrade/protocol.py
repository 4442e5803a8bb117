"""Wire protocol: the pydantic v2 models raygrade accepts and returns over HTTP.

Shapes, in short::

    GradingJob
      assessment: Assessment(questions=[Question(id, prompt, max_score, ...)])
      submissions: [Submission(student_id, pages=[ImagePage | TextPage], question_ids?)]
      options: JobOptions(model, reading_mode, idempotency_key, ...)

    JobResults
      results: [GradeResult(student_id, question_id, score, feedback, confidence, pages, ...)]
      errors:  [GradingErrorItem(student_ids, question_ids, type, message)]

Every model forbids unknown fields, so a misspelt field is a 400 naming it.
"""

from __future__ import annotations

import base64
import binascii
import enum
import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Largest decoded page image accepted, in bytes.
MAX_IMAGE_BYTES = 20 * 1024 * 1024

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def media_type_of(data: bytes) -> str:
    """``image/png`` or ``image/jpeg`` from an image file's magic bytes (its first 8 suffice)."""
    return "image/png" if data.startswith(_PNG_MAGIC) else "image/jpeg"


class ImagePage(_Model):
    """One scanned page, as a base64-encoded PNG or JPEG (no ``data:`` prefix)."""

    type: Literal["image"] = "image"
    data: str = Field(description="Base64 PNG or JPEG bytes.", repr=False)

    @field_validator("data")
    @classmethod
    def _check_image(cls, v: str) -> str:
        try:
            raw = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("page data is not valid base64") from None
        if len(raw) > MAX_IMAGE_BYTES:
            raise ValueError(f"page image is {len(raw)} bytes; the limit is {MAX_IMAGE_BYTES}")
        if not (raw.startswith(_PNG_MAGIC) or raw.startswith(_JPEG_MAGIC)):
            raise ValueError("page image must be PNG or JPEG")
        return v

    @property
    def media_type(self) -> str:
        """``image/png`` or ``image/jpeg``, from the magic bytes (decodes only the first few)."""
        return media_type_of(base64.b64decode(self.data[:12]))

    def image_bytes(self) -> bytes:
        """The decoded image file bytes."""
        return base64.b64decode(self.data)


class StoredImage(_Model):
    """A page image held in the job store's blob store (:mod:`raygrade.blobs`), by reference.

    Internal: the store puts one in place of every :class:`ImagePage` of an accepted job,
    and the batcher turns it back into an :class:`ImagePage` for the grader. Clients cannot
    send it: the HTTP API refuses jobs holding one (:meth:`GradingJob.stored_pages`).
    """

    type: Literal["stored_image"] = "stored_image"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    media_type: Literal["image/png", "image/jpeg"]
    width: int = Field(gt=0, description="Pixels.")
    height: int = Field(gt=0, description="Pixels.")
    size: int = Field(ge=0, description="Bytes of the image file.")


class TextPage(_Model):
    """One page given as plain text (typed answers, or text already transcribed)."""

    type: Literal["text"] = "text"
    text: str = Field(max_length=200_000, repr=False)


Page = Annotated[ImagePage | TextPage | StoredImage, Field(discriminator="type")]


class GradedExample(_Model):
    """An answer to the same question with its human grade, shown to the model for calibration."""

    answer: str = Field(max_length=20_000)
    score: float = Field(ge=0)
    feedback: str | None = None


class Question(_Model):
    """One question of an assessment.

    ``max_score`` is in points; grades are in ``[0, max_score]``. ``score_step``
    (points) restricts grades to multiples of it, e.g. 0.5.
    """

    id: str = Field(min_length=1, max_length=128)
    prompt: str = Field(min_length=1, max_length=20_000)
    reference_answer: str | None = Field(default=None, max_length=50_000)
    rubric: str = Field(default="", max_length=50_000)
    max_score: float = Field(gt=0, le=1000)
    score_step: float | None = Field(default=None, gt=0)
    model_answer_images: list[ImagePage] = Field(default_factory=list, max_length=8)
    examples: list[GradedExample] = Field(default_factory=list, max_length=500)

    @model_validator(mode="after")
    def _check_examples(self) -> Question:
        for i, ex in enumerate(self.examples):
            if ex.score > self.max_score:
                raise ValueError(f"examples[{i}].score {ex.score} exceeds max_score {self.max_score}")
        return self

    def allowed_scores(self) -> list[float] | None:
        """The grid of legal scores when ``score_step`` is set, else ``None``."""
        if self.score_step is None:
            return None
        n = int(round(self.max_score / self.score_step))
        grid = [round(i * self.score_step, 6) for i in range(n + 1)]
        if grid[-1] < self.max_score:
            grid.append(self.max_score)
        return grid


class Assessment(_Model):
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


class Submission(_Model):
    """One student's answer pages, in order.

    ``question_ids`` names the questions these pages answer (default: all of the
    assessment's questions).
    """

    student_id: str = Field(min_length=1, max_length=256)
    pages: list[Page] = Field(min_length=1, max_length=200)
    question_ids: list[str] | None = None


class ReadingMode(str, enum.Enum):
    """How pages reach the model.

    - ``auto``: ``vision`` when the provider accepts images, else ``ocr``.
    - ``vision``: images go to a vision-language model as they are.
    - ``ocr``: images are read by OCR first and the text goes to the model.
    """

    AUTO = "auto"
    VISION = "vision"
    OCR = "ocr"


class CompletionPolicy(_Model):
    """When a job is complete.

    ``rule="all"``: when every item is graded or has failed. ``rule="quorum"``: as soon
    as ``min_graded_share`` of the items are graded; items still pending then are
    cancelled (error type ``not_graded``). A quorum that failures make unreachable ends
    the job when every item is done, like ``"all"``.
    """

    rule: Literal["all", "quorum"] = "all"
    min_graded_share: float = Field(default=1.0, gt=0, le=1)


class JobOptions(_Model):
    """Per-job options."""

    model: str | None = Field(default=None, description="Model name; default: the deployment's.")
    reading_mode: ReadingMode = ReadingMode.AUTO
    idempotency_key: str | None = Field(default=None, max_length=256)
    temperature: float = Field(default=0.0, ge=0, le=2)
    review_share: float = Field(default=0.0, ge=0, le=1, description=(
        "Share of graded items a human will review: the least confident are flagged needs_review."))
    completion: CompletionPolicy = Field(default_factory=CompletionPolicy)
    webhook_url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://", description=(
        "POSTed the final JobStatus when the job ends, signed per Standard Webhooks (webhook-id, "
        "webhook-timestamp, webhook-signature: v1,base64(HMAC-SHA256(secret, id.timestamp.body)))."))


class GradingJob(_Model):
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

    def stored_pages(self) -> list[str]:
        """Where the job holds :class:`StoredImage` pages (``submissions[i].pages[k]``): raygrade's
        own references, which a client may not send."""
        return [f"submissions[{i}].pages[{k}]" for i, sub in enumerate(self.submissions)
                for k, p in enumerate(sub.pages) if isinstance(p, StoredImage)]

    def questions_for(self, sub: Submission) -> list[Question]:
        """The questions a submission answers, in assessment order."""
        if sub.question_ids is None:
            return list(self.assessment.questions)
        wanted = set(sub.question_ids)
        return [q for q in self.assessment.questions if q.id in wanted]


# ----------------------------------------------------------------------------- results


class Usage(_Model):
    """Token usage as the provider reported it (OpenAI ``usage`` object)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens + other.prompt_tokens,
                     completion_tokens=self.completion_tokens + other.completion_tokens)


class GradeResult(_Model):
    """One grade: one student, one question.

    ``usage`` is this item's share of its batch's usage (the batch's usage
    divided evenly over its items); ``batch_id`` names the request it came from.
    """

    student_id: str
    question_id: str
    score: float
    max_score: float
    feedback: str
    confidence: float = Field(ge=0, le=1)
    confidence_source: Literal["self_reported", "score_logprob", "reference_similarity"] = Field(
        default="self_reported", description=(
            "Where the confidence comes from: the model's own number, the probability of the score's "
            "tokens (token log-probabilities), or the baseline's calibrated margin."))
    confidence_calibrated: bool = Field(default=False, description=(
        "The confidence went through the provider's fitted calibration map (P(level right) on graded examples)."))
    baseline_agrees: bool | None = Field(default=None, description=(
        "Whether the reference-similarity baseline gave the same level (none/partial/full); null when not compared."))
    pages: list[int] = Field(description="0-based indices of the student's pages the grade used.")
    model: str
    batch_id: str
    usage: Usage
    needs_review: bool = Field(default=False, description="Among the least confident ``review_share`` of the job.")


class GradingErrorItem(_Model):
    """An error that prevented grading some items; the rest of the job goes on."""

    student_ids: list[str]
    question_ids: list[str]
    type: str
    message: str
    batch_id: str | None = None

    @property
    def item_count(self) -> int:
        """Items (student × question) this error covers."""
        return len(self.student_ids) * len(self.question_ids)


class JobState(str, enum.Enum):
    """Lifecycle of a job: queued → running → (succeeded | partial | failed), and
    queued | running → cancelled. Terminal states are final."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.PARTIAL, JobState.FAILED, JobState.CANCELLED)


class JobProgress(_Model):
    """Counts for a job in progress."""

    students: int = 0
    items_total: int = 0
    items_graded: int = 0
    items_failed: int = 0
    items_needs_review: int = 0
    items_cancelled: int = 0
    batches_total: int = 0
    batches_done: int = 0
    batches_redispatched: int = Field(default=0, description="Dispatches after a lost grader or batcher.")


class JobStatus(_Model):
    """The body of ``GET /v1/jobs/{id}`` and of the 202 answer to ``POST /v1/jobs``."""

    id: str
    object: Literal["grading.job"] = "grading.job"
    state: JobState
    created_at: float = Field(default_factory=time.time, description="Unix seconds.")
    finished_at: float | None = None
    progress: JobProgress = Field(default_factory=JobProgress)
    model: str | None = None
    usage: Usage = Field(default_factory=Usage)


class JobResults(_Model):
    """The body of ``GET /v1/jobs/{id}/results``."""

    id: str
    object: Literal["grading.job.results"] = "grading.job.results"
    state: JobState
    results: list[GradeResult]
    errors: list[GradingErrorItem]
    usage: Usage


class ErrorDetail(BaseModel):
    """The ``error`` object of every error response (OpenAI's shape)."""

    message: str
    type: str = Field(description="e.g. invalid_request_error, not_found_error, illegal_state_transition.")
    param: str | None = Field(default=None, description="The offending field, when there is one.")
    code: str | None = None


class ErrorResponse(BaseModel):
    """Body of every 4xx/5xx answer: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorDetail
