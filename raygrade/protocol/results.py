"""What comes back: job status and progress, grades, per-item errors, usage, the error body."""

from __future__ import annotations

import enum
import time
from typing import Literal

from pydantic import BaseModel, Field

from raygrade.protocol._base import _Model
from raygrade.protocol.reviews import ReviewAgreement, ReviewPlan, TeacherReview


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
    expected_error: float | None = Field(default=None, ge=0, description=(
        "Expected |score - the human's score| in points: from the baseline's distribution over the grid "
        "(its examples near this grade and SAF's), else (1 - confidence) x the grid's step (a miss is at "
        "least one step). What review_share routes by (as a share of max_score)."))
    confidence_calibrated: bool = Field(default=False, description=(
        "The confidence went through the provider's fitted calibration map (P(level right) on graded examples)."))
    baseline_agrees: bool | None = Field(default=None, description=(
        "Whether the reference-similarity baseline gave the same level (none/partial/full); null when not compared."))
    pages: list[int] = Field(description="0-based indices of the student's pages the grade used.")
    model: str
    batch_id: str
    usage: Usage
    needs_review: bool = Field(default=False, description=(
        "Among the ``review_share`` of the job most at risk (``review_by``), chosen by its review target, or "
        "in its audit sample (``audit``)."))
    audit: bool = Field(default=False, description=(
        "In the job's random audit sample (options.review_audit_share): flagged for review whatever its risk, "
        "so that the teacher's scores on it recalibrate the job's confidences without selection bias."))
    calibrated_confidence: float | None = Field(default=None, ge=0, le=1, description=(
        "The confidence recalibrated from the job's audited reviews so far (JobResults.recalibration); "
        "null before any audit item is reviewed."))
    item_id: str | None = Field(default=None, description=(
        "The item's id within its job (`item_<n>`; the review route's), in the job's results."))
    graded_by: Literal["model", "teacher"] = Field(default="model", description=(
        "Who gave ``score``: the model, or a teacher whose review replaced the model's score."))
    model_score: float | None = Field(default=None, description=(
        "The model's own score, kept beside a teacher's (in the job's results; equals ``score`` until a review)."))
    review: TeacherReview | None = Field(default=None, description="The teacher's review, once there is one.")


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


class JobWarning(_Model):
    """Something about a job's grades that its items do not say alone: every grade of the
    named questions is affected (e.g. ``degenerate_reference``: the grader could not tell the
    graded examples apart, so those grades are a fallback at low confidence)."""

    type: str
    question_ids: list[str]
    message: str


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
    items_reviewed: int = Field(default=0, description="Items a teacher has reviewed (flagged or not).")
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
    tenant: str = Field(default="default", description="The tenant the job belongs to (its API key's).")
    review_plan: ReviewPlan | None = Field(default=None, description=(
        "With a review_target: the share of items it flagged and the agreement expected (once the job ended); "
        "before, for an exact target, the share forecast from the namespace's recent jobs (basis history)."))
    regrade_of: str | None = Field(default=None, description=(
        "For a regrade (``POST /v1/jobs/{id}/regrade``): the job whose question this job regrades; its "
        "grades replace that job's unreviewed model grades when this job ends."))
    warnings: list[JobWarning] = Field(default_factory=list, description=(
        "Questions whose grades are all affected by one problem, e.g. a reference answer that cannot "
        "separate the graded examples (type degenerate_reference); their items go to review first."))


class JobList(_Model):
    """The body of ``GET /v1/jobs``: a page of the caller's jobs, newest first (OpenAI's list shape).

    ``last_id`` is the cursor for the next page (``?after=last_id``) while ``has_more``.
    """

    object: Literal["list"] = "list"
    data: list[JobStatus]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class ConfidenceRecalibration(_Model):
    """``p' = σ(slope · logit(p) + intercept)``, fitted on the job's reviewed audit items
    (:func:`raygrade.recalibration.fit_recalibration`)."""

    audited: int = Field(description="Audit items reviewed (the fit's data).")
    slope: float
    intercept: float


class JobResults(_Model):
    """The body of ``GET /v1/jobs/{id}/results``."""

    id: str
    object: Literal["grading.job.results"] = "grading.job.results"
    state: JobState
    results: list[GradeResult]
    errors: list[GradingErrorItem]
    usage: Usage
    review_agreement: ReviewAgreement | None = Field(default=None, description=(
        "Agreement between the model and the teachers on the items reviewed so far (null before any review)."))
    recalibration: ConfidenceRecalibration | None = Field(default=None, description=(
        "The job's confidences recalibrated from its reviewed audit items (null before any)."))


class ErrorDetail(BaseModel):
    """The ``error`` object of every error response (OpenAI's shape)."""

    message: str
    type: str = Field(description="e.g. invalid_request_error, not_found_error, illegal_state_transition.")
    param: str | None = Field(default=None, description="The offending field, when there is one.")
    code: str | None = None


class ErrorResponse(BaseModel):
    """Body of every 4xx/5xx answer: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorDetail
