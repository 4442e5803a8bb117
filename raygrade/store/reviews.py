"""Teachers' reviews: the review queue, a review (with its audit trail) and the pages a reviewer reads.

An item is reviewable once graded. A review writes a row to ``raygrade_reviews`` (kept for
ever: the audit trail, with the time and the API key's id) and sets the review that stands on
the item; a second review replaces the first there. Sending the same review again (same score,
comment and key) changes nothing: the route is idempotent. The model's grade stays as it was.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from raygrade.batch import GradeBatch
from raygrade.blobs import page_bytes
from raygrade.errors import IllegalTransitionError, InvalidRequestError, NotFoundError
from raygrade.protocol import (
    GradeResult,
    GradingJob,
    Question,
    ReviewItem,
    ReviewRequest,
    StoredImage,
    TeacherReview,
    TextPage,
    media_type_of,
    resolved,
)
from raygrade.recalibration import is_audit
from raygrade.store.core import StoreCore
from raygrade.store.outbox import REVIEWED
from raygrade.store.review_plan import choose_for_review
from raygrade.store.schema import api_keys, batches, items, jobs, reviews

ITEM_PREFIX = "item_"


def item_id_of(seq: int) -> str:
    """The API's id of the item with sequence number ``seq`` in its job (``item_<seq>``)."""
    return f"{ITEM_PREFIX}{seq}"


def seq_of(item_id: str) -> int:
    """The sequence number in an item id. Raises :class:`NotFoundError` for a malformed id."""
    digits = item_id[len(ITEM_PREFIX):] if item_id.startswith(ITEM_PREFIX) else ""
    if not digits.isdigit() or len(digits) > 12:
        raise NotFoundError(f"no item with id {item_id!r}", param="item_id")
    return int(digits)


def on_grid(score: float, question: Question) -> bool:
    """Whether ``score`` (points) is a legal score of ``question``: in ``[0, max_score]`` and on its
    grid (:meth:`Question.on_grid`, the rule a model's scores are held to as well)."""
    return 0 <= score <= question.max_score and question.on_grid(score)


def review_of(row: Any) -> TeacherReview | None:
    """The review that stands on an item row, or ``None``."""
    if row["reviewed_at"] is None:
        return None
    return TeacherReview(score=row["review_score"], comment=row["review_comment"], reviewed_by=row["reviewed_by"],
                         reviewed_at=row["reviewed_at"], revisions=row["review_revisions"])


def final_result(row: Any) -> GradeResult:
    """A graded item row as a result: the final score (the teacher's once reviewed), the model's
    beside it, who graded it, and its review flag."""
    g = GradeResult.model_validate_json(row["result"])
    review = review_of(row)
    return g.model_copy(update={
        "needs_review": bool(row["needs_review"]), "item_id": item_id_of(row["seq"]), "model_score": g.score,
        "review": review, "graded_by": "teacher" if review else "model",
        "score": review.score if review else g.score})


class Reviews(StoreCore):
    """The review operations of :class:`raygrade.store.JobStore` (tenant-scoped, as jobs are)."""

    def review_queue(self, namespace: str, tenant: str, *, job_id: str | None = None,
                     question_id: str | None = None, status: str | None = None, limit: int = 50,
                     after: str | None = None) -> tuple[list[ReviewItem], bool]:
        """Items to review, or reviewed: ``(up to limit items, whether more follow)`` in job and item order.

        Args:
            status: ``pending`` (flagged, not reviewed yet), ``done`` (reviewed), or ``None`` (both).
            after: The previous page's ``last_id`` (``<job_id>/<item id>``).

        Raises:
            NotFoundError: ``job_id`` is not one of the tenant's jobs, or ``after`` is malformed.
        """
        q = (sa.select(items).join(jobs, jobs.c.id == items.c.job_id)
             .where(jobs.c.namespace == namespace, jobs.c.tenant == tenant, items.c.state == "graded"))
        with self.engine.connect() as conn:
            if job_id is not None:
                self._job_row(conn, job_id, tenant=tenant)
                q = q.where(items.c.job_id == job_id)
            if question_id is not None:
                q = q.where(items.c.question_id == question_id)
            if status == "pending":
                q = q.where(items.c.needs_review.is_(True), items.c.reviewed_at.is_(None))
            elif status == "done":
                q = q.where(items.c.reviewed_at.is_not(None))
            else:
                q = q.where(sa.or_(items.c.needs_review.is_(True), items.c.reviewed_at.is_not(None)))
            if after is not None:
                a_job, _, a_item = after.partition("/")
                a_seq = seq_of(a_item)
                q = q.where(sa.or_(items.c.job_id > a_job, sa.and_(items.c.job_id == a_job, items.c.seq > a_seq)))
            rows = conn.execute(q.order_by(items.c.job_id, items.c.seq).limit(limit + 1)).mappings().all()
            page = rows[:limit]
            out = []
            for jid in dict.fromkeys(r["job_id"] for r in page):
                job = self._job_body(conn, jid)
                of_job = [r for r in page if r["job_id"] == jid]
                texts = self._answer_texts(conn, job, of_job)
                out += [self._review_item(r, job, texts) for r in of_job]
        return out, len(rows) > limit

    def review_item(self, job_id: str, item_id: str, review: ReviewRequest, *, tenant: str | None = None,
                    key_hash: str | None = None) -> ReviewItem:
        """Record a teacher's review of one graded item; returns the item as reviewed.

        Args:
            key_hash: SHA-256 of the caller's API key (its id goes into the audit trail);
                ``None`` with authentication disabled.

        Raises:
            NotFoundError: no such job (or another tenant's) or item.
            IllegalTransitionError: the item is not graded (pending, failed or cancelled; 409).
            InvalidRequestError: the score is off the question's grid (400, ``param: score``).
        """
        return self.review_items(job_id, [item_id], review, tenant=tenant, key_hash=key_hash)[0]

    def review_items(self, job_id: str, item_ids: list[str], review: ReviewRequest, *, tenant: str | None = None,
                     key_hash: str | None = None, keep_reviewed: bool = False) -> list[ReviewItem]:
        """One review for several items of a job, in one transaction (an answer group's review);
        ``keep_reviewed``: items a teacher has reviewed already keep their review. Raises as
        :meth:`review_item`, before anything is written."""
        seqs = [seq_of(i) for i in item_ids]
        with self.engine.begin() as conn:
            ended = self._job_row(conn, job_id, lock=True, tenant=tenant)["finished_at"] is not None
            found = {r["seq"]: r for r in conn.execute(sa.select(items).where(
                items.c.job_id == job_id, items.c.seq.in_(seqs))).mappings()}
            job = self._job_body(conn, job_id)
            questions = {q.id: q for q in job.assessment.questions}
            for item_id, seq in zip(item_ids, seqs):
                row = found.get(seq)
                if row is None:
                    raise NotFoundError(f"no item with id {item_id!r} in job {job_id!r}", param="item_id")
                if row["state"] != "graded":
                    raise IllegalTransitionError(f"item {item_id} is {row['state']}, not graded: only graded items "
                                                 "can be reviewed", param="item_id")
                question = questions[row["question_id"]]
                if not on_grid(review.score, question):
                    grid = question.allowed_scores()
                    where = (f"one of {', '.join(f'{g:g}' for g in grid)}" if grid is not None
                             else f"in [0, {question.max_score:g}]")
                    raise InvalidRequestError(f"score {review.score:g} is not on question {question.id!r}'s grid: "
                                              f"{where}", param="score")
            key_id = None
            if key_hash is not None:
                key_id = conn.execute(sa.select(api_keys.c.id).where(api_keys.c.key_hash == key_hash)
                                      ).scalar_one_or_none()
            now, first, recorded = self._clock(), 0, 0
            for seq in seqs:
                row = found[seq]
                standing = review_of(row)
                if standing is not None and (keep_reviewed or (standing.score, standing.comment,
                                                               standing.reviewed_by) == (review.score, review.comment,
                                                                                         key_id)):
                    continue  # kept, or the same review again: nothing new to record
                conn.execute(reviews.insert().values(
                    job_id=job_id, student_id=row["student_id"], question_id=row["question_id"], score=review.score,
                    model_score=GradeResult.model_validate_json(row["result"]).score, comment=review.comment,
                    key_id=key_id, tenant=tenant or "", created_at=now))
                conn.execute(items.update().where(items.c.job_id == job_id, items.c.seq == seq).values(
                    review_score=review.score, review_comment=review.comment, reviewed_by=key_id, reviewed_at=now,
                    review_revisions=items.c.review_revisions + 1))
                first += standing is None
                recorded += 1
            self._count(conn, job_id, items_reviewed=first)
            share = job.options.review_audit_share
            if recorded and share and ended and any(
                    is_audit(job_id, found[s]["student_id"], found[s]["question_id"], share) for s in seqs):
                self._flag_review(conn, job_id, job)  # an audit moves the recalibration: flag again with it
            if recorded:
                self._announce_if_reviewed(conn, job_id, job)
            rows = {r["seq"]: r for r in conn.execute(sa.select(items).where(
                items.c.job_id == job_id, items.c.seq.in_(seqs))).mappings()}
            texts = self._answer_texts(conn, job, list(rows.values()))
            return [self._review_item(rows[seq], job, texts) for seq in seqs]

    def answers(self, job_id: str, question_id: str, tenant: str | None = None
                ) -> tuple[list[ReviewItem], list[str | None]]:
        """Every graded item of a question, in item order, and its answer text (the student's
        text pages, or what OCR read from the page images; ``None`` when read as images).

        Raises:
            NotFoundError: no such job (or another tenant's), or no such question in it.
        """
        with self.engine.connect() as conn:
            self._job_row(conn, job_id, tenant=tenant)
            job = self._job_body(conn, job_id)
            if all(q.id != question_id for q in job.assessment.questions):
                raise NotFoundError(f"job {job_id} has no question {question_id!r}", param="question_id")
            rows = conn.execute(sa.select(items).where(items.c.job_id == job_id, items.c.question_id == question_id,
                                                       items.c.state == "graded").order_by(items.c.seq)
                                ).mappings().all()
            texts = self._answer_texts(conn, job, list(rows))
        out = [self._review_item(r, job, texts) for r in rows]
        return out, [texts[r["student_id"]][0] if r["student_id"] in texts else None for r in rows]

    def _flag_review(self, conn, job_id: str, job: GradingJob) -> None:
        """Flag the job's items for review (in the caller's transaction): with ``review_share``, that
        share of the graded items in all, flagged items already reviewed counted first, then the
        unreviewed ones most at risk (:func:`raygrade.review.risk` by ``options.review_by``); with
        ``review_target``, the fewest unreviewed items whose review is expected to reach it (exact:
        the least confident, :func:`raygrade.review.target_cut`; qwk: the largest expected squared
        errors, :func:`raygrade.review.qwk_target_cut`; every reviewed item counts right), and the
        choice is recorded as the job's ``review_plan``. Run when a job ends and again when a regrade
        of it ends."""
        target = job.options.review_target  # the grades themselves are read only where they are needed
        graded = items.c.result if job.options.review_audit_share or (target and target.metric == "qwk") else \
            sa.null().label("result")
        rows = conn.execute(sa.select(items.c.student_id, items.c.question_id, items.c.confidence,
                                      items.c.error_share, items.c.reviewed_at, items.c.needs_review,
                                      graded, items.c.review_score)
                            .where(items.c.job_id == job_id, items.c.state == "graded").order_by(items.c.seq)).all()
        open_rows = [r for r in rows if r.reviewed_at is None]
        reviewed_flagged = sum(1 for r in rows if r.reviewed_at is not None and r.needs_review)
        picked, plan = choose_for_review(rows, job, job_id)
        flagged = [open_rows[i] for i in sorted(picked)]
        conn.execute(items.update().where(items.c.job_id == job_id, items.c.reviewed_at.is_(None),
                                          items.c.needs_review.is_(True)).values(needs_review=False))
        if flagged:  # by primary key, one row per parameter set: any number of items
            by_key = items.update().where(items.c.job_id == sa.bindparam("j"), items.c.student_id == sa.bindparam("s"),
                                          items.c.question_id == sa.bindparam("q"))
            conn.execute(by_key.values(needs_review=True),
                         [{"j": job_id, "s": r.student_id, "q": r.question_id} for r in flagged])
        conn.execute(jobs.update().where(jobs.c.id == job_id).values(
            items_needs_review=len(flagged) + reviewed_flagged,
            review_plan=plan.model_dump_json() if plan is not None else None))

    def review_history(self, job_id: str, item_id: str, tenant: str | None = None) -> list[dict[str, Any]]:
        """Every review of an item, oldest first (the audit trail): ``score``, ``model_score``,
        ``comment``, ``key_id``, ``created_at`` (Unix seconds).

        Raises:
            NotFoundError: no such job (or another tenant's) or item.
        """
        seq = seq_of(item_id)
        with self.engine.connect() as conn:
            self._job_row(conn, job_id, tenant=tenant)
            row = conn.execute(sa.select(items.c.student_id, items.c.question_id).where(
                items.c.job_id == job_id, items.c.seq == seq)).first()
            if row is None:
                raise NotFoundError(f"no item with id {item_id!r} in job {job_id!r}", param="item_id")
            return [dict(r) for r in conn.execute(
                sa.select(reviews.c.score, reviews.c.model_score, reviews.c.comment, reviews.c.key_id,
                          reviews.c.created_at)
                .where(reviews.c.job_id == job_id, reviews.c.student_id == row.student_id,
                       reviews.c.question_id == row.question_id).order_by(reviews.c.id)).mappings()]

    def item_page(self, job_id: str, item_id: str, page: int, tenant: str | None = None) -> tuple[bytes, str]:
        """Page ``page`` (0-based) of the student an item belongs to: ``(bytes, media type)``; an
        image as it was uploaded, a text page as UTF-8 ``text/plain``.

        Raises:
            NotFoundError: no such job (or another tenant's), item or page.
            StorageError: the page image's blob is missing or corrupt.
        """
        seq = seq_of(item_id)
        with self.engine.connect() as conn:
            self._job_row(conn, job_id, tenant=tenant)
            student = conn.execute(sa.select(items.c.student_id).where(items.c.job_id == job_id,
                                                                       items.c.seq == seq)).scalar_one_or_none()
            if student is None:
                raise NotFoundError(f"no item with id {item_id!r} in job {job_id!r}", param="item_id")
            job = self._job_body(conn, job_id)
        pages = next(s.pages for s in job.submissions if s.student_id == student)
        if not 0 <= page < len(pages):
            raise NotFoundError(f"item {item_id}'s student has {len(pages)} page(s); no page {page}", param="page")
        p = resolved(pages[page])
        if isinstance(p, TextPage):
            return p.text.encode(), "text/plain; charset=utf-8"
        raw = page_bytes(p, self.blobs)
        return raw, p.media_type if isinstance(p, StoredImage) else media_type_of(raw)

    def _announce_if_reviewed(self, conn, job_id: str, job: GradingJob) -> None:
        """Queue the ``grading.job.reviewed`` webhook when an ended job's review queue has just
        emptied (once per job; in the reviewing transaction)."""
        j = self._job_row(conn, job_id)
        if j["state"] not in ("succeeded", "partial", "failed") or not j["items_needs_review"]:
            return
        if not conn.execute(sa.select(sa.func.count()).where(items.c.job_id == job_id, items.c.needs_review.is_(True),
                                                             items.c.reviewed_at.is_(None))).scalar_one():
            self._queue_webhook(conn, job_id, job, REVIEWED)  # type: ignore[attr-defined]  # JobStore's outbox

    def _answer_texts(self, conn, job: GradingJob, rows: list[Any]) -> dict[str, tuple[str, bool]]:
        """``{student_id: (text, transcribed)}`` for the students of item ``rows``: the text the model
        read (a student's text pages, or the OCR of page images as planned into its batch);
        ``transcribed`` when that text was read from images. Students read as images (vision)
        have none."""
        subs = {s.student_id: s for s in job.submissions}
        out: dict[str, tuple[str, bool]] = {}
        need: dict[str, set[str]] = {}
        for r in rows:
            sub = subs[r["student_id"]]
            if all(isinstance(p, TextPage) for p in sub.pages):
                out[sub.student_id] = ("\n".join(p.text for p in sub.pages if isinstance(p, TextPage)), False)
            elif r["batch_id"]:
                need.setdefault(r["batch_id"], set()).add(sub.student_id)
        if need:
            for payload in conn.execute(sa.select(batches.c.payload).where(batches.c.id.in_(list(need)))).scalars():
                batch = GradeBatch.model_validate_json(payload)
                for w in batch.students:
                    text = "\n".join(p.text for p in w.pages if isinstance(p, TextPage))
                    if w.student_id in need[batch.batch_id] and text.strip():
                        out[w.student_id] = (text, True)
        return out

    @staticmethod
    def _review_item(row: Any, job: GradingJob, texts: dict[str, tuple[str, bool]] | None = None) -> ReviewItem:
        g = final_result(row)
        question = next(q for q in job.assessment.questions if q.id == row["question_id"])
        item_id = item_id_of(row["seq"])
        text, transcribed = (texts or {}).get(row["student_id"], (None, False))
        return ReviewItem(
            id=item_id, job_id=row["job_id"], student_id=row["student_id"], question_id=row["question_id"],
            status="done" if g.review else "pending", score=g.score, graded_by=g.graded_by,
            model_score=g.model_score if g.model_score is not None else g.score, max_score=g.max_score,
            score_step=question.score_step, feedback=g.feedback, confidence=g.confidence,
            expected_error=g.expected_error, needs_review=g.needs_review,
            pages=g.pages, page_urls=[f"/v1/jobs/{row['job_id']}/items/{item_id}/pages/{k}" for k in g.pages],
            transcription=text if transcribed else None, review=g.review)
