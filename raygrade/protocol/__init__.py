"""Wire protocol: the pydantic v2 models raygrade accepts and returns over HTTP.

Shapes, in short::

    GradingJob
      assessment: Assessment(questions=[Question(id, prompt, max_score, ...)])
      submissions: [Submission(student_id, pages=[ImagePage | TextPage | FilePage], question_ids?)]
      options: JobOptions(model, reading_mode, idempotency_key, ...)

    JobResults
      results: [GradeResult(student_id, question_id, score, feedback, confidence, pages, ...)]
      errors:  [GradingErrorItem(student_ids, question_ids, type, message)]

Every model forbids unknown fields, so a misspelt field is a 400 naming it. The models live in
:mod:`~raygrade.protocol.pages`, :mod:`~raygrade.protocol.files`, :mod:`~raygrade.protocol.jobs`,
:mod:`~raygrade.protocol.results`, :mod:`~raygrade.protocol.reviews` and :mod:`~raygrade.protocol.tenants`;
import them from here.
"""

from __future__ import annotations

from raygrade.protocol.files import (
    FileDeleted,
    FileList,
    FileObject,
    FileSplit,
    RosterEntry,
    SplitByCoverSheets,
    SplitByPageCount,
    SplitByRoster,
    SplitRequest,
    StudentPages,
)
from raygrade.protocol.jobs import (
    MAX_PAGES,
    Assessment,
    CompletionPolicy,
    GradedExample,
    GradingJob,
    JobOptions,
    Question,
    ReadingMode,
    ReviewTarget,
    Submission,
)
from raygrade.protocol.pages import (
    MAX_IMAGE_BYTES,
    FilePage,
    ImagePage,
    Page,
    ResolvedPage,
    StoredImage,
    TextPage,
    media_type_of,
    resolved,
)
from raygrade.protocol.results import (
    ConfidenceRecalibration,
    ErrorDetail,
    ErrorResponse,
    GradeResult,
    GradingErrorItem,
    JobList,
    JobProgress,
    JobResults,
    JobState,
    JobStatus,
    JobWarning,
    Usage,
)
from raygrade.protocol.reviews import (
    AnswerGroup,
    AnswerGroupList,
    ReviewAgreement,
    ReviewItem,
    ReviewList,
    ReviewPlan,
    ReviewRequest,
    TeacherReview,
)
from raygrade.protocol.tenants import QUOTA_WINDOW_S, TenantQuota, TenantUsage

__all__ = [
    "AnswerGroup",
    "AnswerGroupList",
    "Assessment",
    "CompletionPolicy",
    "ConfidenceRecalibration",
    "ErrorDetail",
    "ErrorResponse",
    "FileDeleted",
    "FileList",
    "FileObject",
    "FilePage",
    "FileSplit",
    "GradeResult",
    "GradedExample",
    "GradingErrorItem",
    "GradingJob",
    "ImagePage",
    "JobList",
    "JobOptions",
    "JobProgress",
    "JobResults",
    "JobState",
    "JobStatus",
    "JobWarning",
    "MAX_IMAGE_BYTES",
    "MAX_PAGES",
    "Page",
    "QUOTA_WINDOW_S",
    "Question",
    "ReadingMode",
    "ResolvedPage",
    "ReviewAgreement",
    "ReviewItem",
    "ReviewList",
    "ReviewPlan",
    "ReviewRequest",
    "ReviewTarget",
    "RosterEntry",
    "SplitByCoverSheets",
    "SplitByPageCount",
    "SplitByRoster",
    "SplitRequest",
    "StoredImage",
    "StudentPages",
    "Submission",
    "TenantQuota",
    "TeacherReview",
    "TenantUsage",
    "TextPage",
    "Usage",
    "media_type_of",
    "resolved",
]
