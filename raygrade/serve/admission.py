"""Checks a job passes at submission, before anything is recorded: that every student fits one
request to the provider (:func:`refuse_unfit`)."""

from __future__ import annotations

from raygrade.errors import InvalidRequestError
from raygrade.planner import JobPlanner
from raygrade.protocol import GradingJob, ReadingMode


def refuse_unfit(planner: JobPlanner, job: GradingJob) -> None:
    """Refuse ``job`` when a student's pages cannot fit one request to the provider (its context
    window or completion limit: :meth:`~raygrade.planner.JobPlanner.unfit`),
    in the reading mode the job will use; nothing is recorded.

    Raises:
        InvalidRequestError: naming the first such student and how many others there are (HTTP 400).
    """
    provider = planner.args.provider
    vision = job.options.reading_mode.resolve(provider.supports_vision) == ReadingMode.VISION
    try:
        unfit = planner.unfit(job, vision)
    except ValueError:
        return  # an unreadable page is the planner's per-student reading_error, as before
    if unfit:
        i, reason = unfit[0]
        more = f" ({len(unfit) - 1} more students do not fit either)" if len(unfit) > 1 else ""
        raise InvalidRequestError(
            f"submissions[{i}]: student {job.submissions[i].student_id!r} {reason}, so no request to "
            f"{provider.model} can hold their pages{more}; split their pages into smaller images or "
            f"fewer pages, or grade them with a model of a larger context", param=f"submissions[{i}].pages")
