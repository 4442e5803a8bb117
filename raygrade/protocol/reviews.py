"""Teachers' reviews of grades: the review queue (``GET /v1/reviews``), a review
(``POST /v1/jobs/{job_id}/items/{item_id}/review``) and what a result keeps of it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from raygrade.protocol._base import _Input, _Model, number


class ReviewRequest(_Input):
    """The body of ``POST /v1/jobs/{job_id}/items/{item_id}/review``: the teacher's score.

    The score must be on the question's grid (``[0, max_score]``, a multiple of ``score_step``
    when the question has one); otherwise the answer is a 400 naming ``score``.
    """

    score: float = number(ge=0, description="Points, on the question's grid.")
    comment: str | None = Field(default=None, max_length=4000, description="The teacher's note (kept in the audit "
                                                                           "trail; shown in the results).")


class TeacherReview(_Model):
    """The review that stands for an item (the newest one; earlier ones stay in the audit trail)."""

    score: float = Field(description="The teacher's score, in points: the item's final score.")
    comment: str | None = None
    reviewed_by: str | None = Field(default=None, description=(
        "Id of the API key that sent the review (`raygrade keys list`); null with authentication disabled."))
    reviewed_at: float = Field(description="Unix seconds.")
    revisions: int = Field(default=1, description="Reviews of this item so far (the audit trail's length).")


class ReviewItem(_Model):
    """One graded item as a reviewer sees it: the model's grade, where to find the student's
    pages, and the teacher's review once there is one."""

    object: Literal["review.item"] = "review.item"
    id: str = Field(description="The item's id within its job (`item_<n>`): the review route's `item_id`.")
    job_id: str
    student_id: str
    question_id: str
    status: Literal["pending", "done"] = Field(description=(
        "pending: flagged for review and not reviewed yet; done: reviewed (flagged or not)."))
    score: float = Field(description="The final score: the teacher's once reviewed, else the model's.")
    graded_by: Literal["model", "teacher"]
    model_score: float
    max_score: float
    score_step: float | None = Field(default=None, description="The question's grid step (null: any score).")
    feedback: str
    confidence: float
    expected_error: float | None = Field(default=None, description=(
        "The grade's expected |score - the human's score| in points (what review_share routes by)."))
    needs_review: bool = Field(description=(
        "Flagged for review: among the `review_share` of its job most at risk, or chosen by its review target."))
    pages: list[int] = Field(description="0-based indices of the student's pages the grade used.")
    page_urls: list[str] = Field(description=(
        "Paths (below the app's route prefix) of those pages: "
        "`GET /v1/jobs/{job_id}/items/{id}/pages/{k}` answers the image (or the text page) itself."))
    transcription: str | None = Field(default=None, description=(
        "The text the model read when the student's pages were page images read by OCR (text-only models)."))
    review: TeacherReview | None = None


class ReviewList(_Model):
    """The body of ``GET /v1/reviews``: a page of review items in job and item order (OpenAI's
    list shape); the next page is ``?after=last_id`` while ``has_more``."""

    object: Literal["list"] = "list"
    data: list[ReviewItem]
    first_id: str | None = None
    last_id: str | None = Field(default=None, description="Cursor of the last item (`<job_id>/<item id>`).")
    has_more: bool = False


class AnswerGroup(_Model):
    """Answers to one question that say much the same thing (:mod:`raygrade.answer_groups`), for a
    teacher to score at once."""

    object: Literal["answer_group"] = "answer_group"
    id: str = Field(description="`group_<n>` (n: its first item's number); stable for the same threshold.")
    job_id: str
    question_id: str
    item_ids: list[str]
    student_ids: list[str]
    scores: list[float] = Field(description="Each member's final score, in `item_ids` order.")
    max_score: float
    score_step: float | None = Field(default=None, description="The question's grid step (null: any score).")
    size: int
    sample: str = Field(description="The first member's answer text (up to 500 characters); empty without text.")
    mean_confidence: float
    reviewed: int = Field(description="Members a teacher has reviewed.")
    status: Literal["pending", "done"] = Field(description="done: every member is reviewed.")


class AnswerGroupList(_Model):
    """The body of ``GET /v1/jobs/{job_id}/questions/{question_id}/groups``: every graded answer
    of the question in exactly one group, groups in item order."""

    object: Literal["list"] = "list"
    data: list[AnswerGroup]
    threshold: float = Field(description="The cosine distance the groups were cut at.")


class ReviewAgreement(_Model):
    """How often the teacher agreed with the model on the items reviewed so far (a job's results)."""

    reviewed: int = Field(description="Items reviewed.")
    exact: float = Field(description="Share of reviewed items where the teacher kept the model's score.")
    mae: float = Field(description="Mean |teacher − model| over reviewed items, in points.")
    mae_of_max: float = Field(description="The same as a share of each item's max_score.")


class ReviewPlan(_Model):
    """The share of a job a review target chose (``JobOptions.review_target``), when the job ended
    or after a regrade; before grading, its forecast (``basis: history``)."""

    metric: Literal["exact", "qwk"]
    target: float
    flagged: int = Field(description="Items flagged for review.")
    share: float = Field(description="flagged / graded items.")
    expected: float = Field(description="Expected agreement (the target's metric) once the flagged items are "
                                        "reviewed (from the confidences or expected errors, reviewed items "
                                        "counted right).")
    basis: Literal["grades", "history"] = Field(default="grades", description=(
        "grades: chosen from the job's own grades (once it ended); history: a forecast before grading, from the "
        "confidences of the namespace's recent jobs graded by the same model (flagged 0, share the expected one)."))
    history_items: int | None = Field(default=None, description="With basis history: the graded items it drew on.")
