"""Regrades: a question's unreviewed items graded again with its reviewed answers as examples
(``POST /v1/jobs/{id}/regrade``), and the regrade's grades merged back when it ends."""

from __future__ import annotations

import hashlib

import sqlalchemy as sa

from raygrade.errors import ConflictError, IllegalTransitionError, NotFoundError
from raygrade.protocol import GradedExample, GradingJob, JobStatus, Submission
from raygrade.store.reviews import Reviews
from raygrade.store.schema import items

#: Most graded examples a regraded question carries (``Question.examples``' limit).
MAX_EXAMPLES = 500


class Regrades(Reviews):
    """The regrade operations of :class:`raygrade.store.JobStore`; ``create_job`` is the job
    part's (:meth:`raygrade.store.JobStore.create_job`)."""

    def regrade_question(self, job_id: str, question_id: str, *, tenant: str | None = None
                         ) -> tuple[JobStatus, bool]:
        """Regrade a question's unreviewed items with its reviewed answers as graded examples.

        A new job (``regrade_of = job_id``) holds the question with its examples plus every
        reviewed answer of it (the teacher's score and comment; answers given as text pages;
        the newest :data:`MAX_EXAMPLES` kept) and the students whose item is graded but not
        reviewed. When it ends, its grades replace those items' model grades in ``job_id``
        (items a teacher reviewed meanwhile keep the review) and ``job_id``'s review flags are
        recomputed (:meth:`_merge_regrade`). The same reviews asked again give the same job.

        Returns:
            ``(the regrade job's status, created)``.

        Raises:
            NotFoundError: no such job (or another tenant's), or no such question in it.
            IllegalTransitionError: the job has not ended, or was cancelled.
            ConflictError: no reviewed item of the question has text to learn from, or
                nothing is left to regrade.
        """
        with self.engine.connect() as conn:
            j = self._job_row(conn, job_id, tenant=tenant)
            if j["state"] not in ("succeeded", "partial"):
                raise IllegalTransitionError(f"job {job_id} is {j['state']}: a question is regraded once its job "
                                             "has succeeded or ended partial", param="job_id")
            job = self._job_body(conn, job_id)
            question = next((q for q in job.assessment.questions if q.id == question_id), None)
            if question is None:
                raise NotFoundError(f"job {job_id} has no question {question_id!r}", param="question_id")
            rows = conn.execute(sa.select(items).where(items.c.job_id == job_id, items.c.question_id == question_id,
                                                       items.c.state == "graded").order_by(items.c.seq)
                                ).mappings().all()
            texts = self._answer_texts(conn, job, [r for r in rows if r["reviewed_at"] is not None])
        pages = {sub.student_id: sub.pages for sub in job.submissions}
        learned = []
        for r in rows:
            if r["reviewed_at"] is None:
                continue
            text = texts.get(r["student_id"], ("", False))[0].strip()
            if text:
                learned.append(GradedExample(answer=text[:20_000], score=r["review_score"],
                                             feedback=r["review_comment"]))
        open_students = [r["student_id"] for r in rows if r["reviewed_at"] is None]
        if not learned:
            raise ConflictError(f"no reviewed item of question {question_id!r} has text to learn from (review some "
                                "first; answers read as images by a vision model have no text to use as an example)",
                                param="question_id")
        if not open_students:
            raise ConflictError(f"every graded item of question {question_id!r} is reviewed: nothing to regrade",
                                param="question_id")
        regraded = question.model_copy(update={"examples": [*question.examples, *learned][-MAX_EXAMPLES:]})
        child = GradingJob(assessment=job.assessment.model_copy(update={"questions": [regraded]}),
                           submissions=[Submission(student_id=sid, pages=pages[sid]) for sid in open_students],
                           options=job.options.model_copy(update={"idempotency_key": None, "webhook_url": None}))
        digest = hashlib.sha256(child.model_dump_json().encode()).hexdigest()[:24]
        return self.create_job(child, f"regrade:{job_id}:{digest}", j["namespace"],  # type: ignore[attr-defined]
                               j["tenant"], regrade_of=job_id)  # (JobStore's create_job)

    def _merge_regrade(self, conn, child_id: str, parent_id: str) -> None:
        """A regrade's grades into the job it regrades (in the regrade's finishing transaction): each
        graded item replaces the parent's model grade unless a teacher has reviewed that item; then
        the parent's review flags are recomputed (:meth:`~raygrade.store.reviews.Reviews._flag_review`)."""
        now = self._clock()
        self._job_row(conn, parent_id, lock=True)
        graded = sa.select(items.c.student_id, items.c.question_id, items.c.result, items.c.confidence,
                           items.c.error_share).where(items.c.job_id == child_id, items.c.state == "graded")
        for r in conn.execute(graded).all():
            conn.execute(items.update().where(
                items.c.job_id == parent_id, items.c.student_id == r.student_id, items.c.question_id == r.question_id,
                items.c.state == "graded", items.c.reviewed_at.is_(None)).values(
                result=r.result, confidence=r.confidence, error_share=r.error_share, updated_at=now))
        self._flag_review(conn, parent_id, self._job_body(conn, parent_id))
