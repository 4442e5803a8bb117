"""What flows between the planner, the graders and the store: one planned request and its outcome.

These types sit below every grader (:mod:`raygrade.grading`, :mod:`raygrade.baseline`)
and the job store, so each can use them without importing the others.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field

from raygrade.prompts import PROMPT_VERSION, StudentWork
from raygrade.protocol import GradeResult, GradingErrorItem, JobWarning, Question, Usage


class GradeBatch(BaseModel):
    """One planned request: some students' pages and the questions they answer.

    ``prompt_tokens_estimate`` (of which ``image_tokens_estimate`` are images) and
    ``max_tokens`` come from the planner; the reservation in the rate limiter is their sum
    (the prompt part scaled by the provider's learned counts).
    """

    model_config = ConfigDict(extra="forbid")

    batch_id: str
    job_id: str
    questions: list[Question]
    students: list[StudentWork]
    prompt_tokens_estimate: int
    image_tokens_estimate: int = 0
    max_tokens: int
    model: str | None = None
    temperature: float = 0.0
    include_model_answer_images: bool = False
    tenant: str = ""  # the job's tenant: the rate limiter's fair share above jobs
    prefix_tokens_estimate: int = 0  # the part of prompt_tokens_estimate every request of its questions repeats
    share_key: str | None = None  # set when the job allows sharing a request with other jobs (raygrade.coalesce)


class BatchOutcome(BaseModel):
    """What grading a batch produced: grades, per-item errors, usage, provider calls made."""

    model_config = ConfigDict(extra="forbid")

    batch_id: str
    results: list[GradeResult]
    errors: list[GradingErrorItem]
    usage: Usage
    calls: int
    cached_prompt_tokens: int = Field(default=0, ge=0, description=(
        "The part of usage.prompt_tokens the provider read from its prompt cache."))
    prompt_version: str = PROMPT_VERSION
    limiter_wait_s: float = Field(default=0.0, ge=0, description="Seconds spent waiting in the rate limiter.")
    provider_s: float = Field(default=0.0, ge=0, description="Seconds spent in provider calls (all attempts).")
    grant_to_send_s: float = Field(default=0.0, ge=0, description=(
        "Longest delay from a rate-limiter grant to its request leaving (seconds)."))
    warnings: list[JobWarning] = Field(default_factory=list, description=(
        "Problems with whole questions (recorded once per job, see JobStatus.warnings)."))


def students_error(students: list[StudentWork], error_type: str, message: str, batch_id: str | None
                   ) -> GradingErrorItem:
    """One error covering every item (student × question) of ``students``."""
    return GradingErrorItem(student_ids=[s.student_id for s in students],
                            question_ids=sorted({q for s in students for q in s.question_ids}),
                            type=error_type, message=message, batch_id=batch_id)


def share_key(batch: GradeBatch) -> str | None:
    """The key under which ``batch`` may share a request with other jobs' batches: equal for the
    same tenant, model, temperature, prompt version and questions; ``None`` for a batch that
    shows model-answer images (their images are part of the prefix, counted once per request)."""
    if batch.include_model_answer_images and any(q.model_answer_images for q in batch.questions):
        return None
    ident = [batch.tenant, batch.model or "", batch.temperature, PROMPT_VERSION,
             [q.model_dump(mode="json") for q in batch.questions]]
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]
