"""Job state: the ``JobRegistry`` deployment (one replica, in memory).

It holds each job's request, progress counts, grades and errors, and answers
status and results queries. Idempotency keys map to job ids (same key and same
body → same job; same key, different body → 409).

Scope: state lives in this replica's memory, so it survives replica restarts of
every *other* deployment but not a restart of this one or of the app; the
durable store (SQLite/PostgreSQL) replaces it behind the same methods.
"""

from __future__ import annotations

import hashlib
import time
import uuid

from ray import serve

from raygrade.errors import ConflictError, NotFoundError
from raygrade.grading import BatchOutcome
from raygrade.review import review_cut
from raygrade.protocol import (
    GradeResult,
    GradingErrorItem,
    GradingJob,
    JobProgress,
    JobResults,
    JobState,
    JobStatus,
    Usage,
)


class _Job:
    def __init__(self, job_id: str, job: GradingJob, body_hash: str):
        self.job = job
        self.body_hash = body_hash
        self.status = JobStatus(id=job_id, state=JobState.QUEUED, model=job.options.model)
        self.results: dict[tuple[str, str], GradeResult] = {}
        self.errors: list[GradingErrorItem] = []
        self.batches_seen: set[str] = set()
        self.batches_by_replica: dict[str, int] = {}


class JobRegistryImpl:
    """Plain in-memory job store (unit-testable; the deployment below wraps it)."""

    def __init__(self):
        self._jobs: dict[str, _Job] = {}
        self._keys: dict[str, str] = {}

    def create(self, job: GradingJob, idempotency_key: str | None = None) -> tuple[JobStatus, bool]:
        """Record a new job, or return the job an idempotency key already names.

        Returns:
            ``(status, created)``; ``created`` is False for a replay of the same key and body.

        Raises:
            ConflictError: the key was used with a different body.
        """
        body_hash = hashlib.sha256(job.model_dump_json().encode()).hexdigest()
        if idempotency_key is not None and idempotency_key in self._keys:
            existing = self._jobs[self._keys[idempotency_key]]
            if existing.body_hash != body_hash:
                raise ConflictError("idempotency key was already used with a different request body",
                                    param="idempotency_key")
            return existing.status, False
        job_id = f"job_{uuid.uuid4().hex}"
        self._jobs[job_id] = _Job(job_id, job, body_hash)
        if idempotency_key is not None:
            self._keys[idempotency_key] = job_id
        return self._jobs[job_id].status, True

    def _get(self, job_id: str) -> _Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFoundError(f"no job with id {job_id!r}", param="job_id") from None

    def get_job(self, job_id: str) -> GradingJob:
        return self._get(job_id).job

    def status(self, job_id: str) -> JobStatus:
        return self._get(job_id).status

    def start(self, job_id: str, *, students: int, items_total: int, batches_total: int, model: str) -> None:
        s = self._get(job_id).status
        s.state = JobState.RUNNING
        s.model = model
        s.progress = JobProgress(students=students, items_total=items_total, batches_total=batches_total)

    def add_errors(self, job_id: str, errors: list[GradingErrorItem]) -> None:
        j = self._get(job_id)
        j.errors.extend(errors)
        j.status.progress.items_failed += sum(e.item_count for e in errors)

    def add_outcome(self, job_id: str, outcome: BatchOutcome, replica: str | None = None) -> None:
        """Record a graded batch. A batch id seen before is ignored (no double grades)."""
        j = self._get(job_id)
        if outcome.batch_id in j.batches_seen:
            return
        j.batches_seen.add(outcome.batch_id)
        for r in outcome.results:
            j.results.setdefault((r.student_id, r.question_id), r)
        self.add_errors(job_id, outcome.errors)
        p = j.status.progress
        p.items_graded = len(j.results)
        p.batches_done += 1
        j.status.usage = j.status.usage + outcome.usage
        if replica:
            j.batches_by_replica[replica] = j.batches_by_replica.get(replica, 0) + 1

    def finish(self, job_id: str, error: GradingErrorItem | None = None) -> JobStatus:
        """Mark the job terminal: succeeded (no errors), partial, or failed (no grades).

        Flags the least confident grades ``needs_review`` per the job's ``review_share``.
        """
        j = self._get(job_id)
        if error is not None:
            j.errors.append(error)
        keys = list(j.results)
        flagged = review_cut([j.results[k].confidence for k in keys], j.job.options.review_share)
        for i, k in enumerate(keys):
            j.results[k] = j.results[k].model_copy(update={"needs_review": i in flagged})
        s = j.status
        s.progress.items_needs_review = len(flagged)
        if not j.errors:
            s.state = JobState.SUCCEEDED
        elif j.results:
            s.state = JobState.PARTIAL
        else:
            s.state = JobState.FAILED
        s.finished_at = time.time()
        return s

    def results(self, job_id: str) -> JobResults:
        j = self._get(job_id)
        order = {sub.student_id: i for i, sub in enumerate(j.job.submissions)}
        qorder = {q.id: i for i, q in enumerate(j.job.assessment.questions)}
        res = sorted(j.results.values(), key=lambda r: (order.get(r.student_id, 0), qorder.get(r.question_id, 0)))
        return JobResults(id=j.status.id, state=j.status.state, results=res, errors=list(j.errors),
                          usage=j.status.usage if j.status.usage else Usage())

    def replicas(self, job_id: str) -> dict[str, int]:
        """Batches graded per grader replica for this job."""
        return dict(self._get(job_id).batches_by_replica)


@serve.deployment(name="JobRegistry", num_replicas=1, ray_actor_options={"num_cpus": 0},
                  max_ongoing_requests=1000)
class JobRegistry(JobRegistryImpl):
    """Serve deployment over :class:`JobRegistryImpl` (one replica: the single owner of job state)."""
