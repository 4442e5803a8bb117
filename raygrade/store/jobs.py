"""The :class:`JobStore`: jobs from creation to their terminal state, and what is read of them."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import sqlalchemy as sa

from raygrade.config.api import DEFAULT_TENANT
from raygrade.errors import ConflictError
from raygrade.protocol import (
    GradeResult,
    GradingErrorItem,
    GradingJob,
    JobResults,
    JobState,
    JobStatus,
    Usage,
)
from raygrade.review import review_agreement
from raygrade.store.batches import BatchLeases
from raygrade.store.files import Files
from raygrade.store.forecast import ReviewForecasts
from raygrade.store.keys import ApiKeys
from raygrade.store.outbox import WebhookOutbox
from raygrade.store.quotas import TenantQuotas
from raygrade.store.regrade import Regrades
from raygrade.store.review_plan import with_audits
from raygrade.store.reviews import final_result
from raygrade.store.schema import batches, items, job_bodies, jobs
from raygrade.store.states import (
    BATCH_TRANSITIONS,
    ITEM_TRANSITIONS,
    JOB_TRANSITIONS,
    check_transition,
    sources,
)


class JobStore(BatchLeases, WebhookOutbox, ApiKeys, TenantQuotas, Regrades, Files, ReviewForecasts):
    """Jobs, items, batches and webhooks in SQLite or PostgreSQL.

    Args:
        url: SQLAlchemy URL (``sqlite:///path.db``, ``postgresql+psycopg://…``).
        clock: Wall clock, Unix seconds (injected in tests).
        blob_uri: Where page images go (default: a folder beside a SQLite file).

    Every method is one transaction. Methods raise :class:`NotFoundError` for an
    unknown job id and :class:`IllegalTransitionError` for a disallowed state change.
    The operations live in six parts: this class (jobs), :class:`BatchLeases`
    (plans, leases, completion of batches), :class:`WebhookOutbox`, :class:`ApiKeys`,
    :class:`TenantQuotas`, :class:`Reviews` (teachers' reviews), :class:`Regrades` and :class:`Files`
    (uploads for their pages).
    """

    def create_job(self, job: GradingJob, idempotency_key: str | None = None, namespace: str = "raygrade",
                   tenant: str = DEFAULT_TENANT, *, regrade_of: str | None = None,
                   trace_context: dict[str, str] | None = None,
                   request_hash: str | None = None) -> tuple[JobStatus, bool]:
        """Record a job and its items (state ``queued``), or return the job its key names.

        ``namespace`` is the application's (``RaygradeArgs.namespace``): several raygrade
        applications can share one database; each resumes only its own jobs. ``tenant`` owns
        the job (the API key's tenant). Idempotency keys are unique per namespace and tenant.
        ``regrade_of`` names the job whose question this one regrades (:meth:`regrade_question`).
        ``trace_context``: the W3C headers of the trace the submission joined (:func:`raygrade.tracing.inject`),
        kept for the batcher that drives the job (:meth:`trace_context`). ``request_hash``: the
        hash of the job as its caller sent it (:meth:`GradingJob.request_hash`), kept with an idempotency key
        so a replay is answered before its pages are resolved (:meth:`replay_request`).

        Returns:
            ``(status, created)``; ``created`` is False for a replay of the same key and body.

        Raises:
            ConflictError: the key was used with a different body (HTTP 409).
            QuotaExceededError: the tenant's quota refuses a new job (HTTP 429; a replay is
                never refused; :mod:`raygrade.store.quotas`).
        """
        job = self.externalize(self.resolve_files(job, tenant))
        body = job.model_dump_json()
        h = hashlib.sha256(body.encode()).hexdigest()
        now = self._clock()
        job_id = f"job_{uuid.uuid4().hex}"
        tc = json.dumps(trace_context) if trace_context else None
        rows = []
        for i, sub in enumerate(job.submissions):
            for j, q in enumerate(job.questions_for(sub)):
                rows.append({"job_id": job_id, "student_id": sub.student_id, "question_id": q.id,
                             "seq": i * 10_000 + j, "state": "pending", "updated_at": now})
        with self.engine.begin() as conn:
            if (quota := self._quota_of(conn, tenant)) is not None:
                self._lock_quota(conn, tenant)
                if idempotency_key is not None and (replay := self._replay(conn, namespace, tenant,
                                                                           idempotency_key, h)) is not None:
                    return replay, False  # accepted before: not counted again, whatever the quota says now
                self._enforce_quota(conn, tenant, quota, len(rows))
            if idempotency_key is not None:
                ins = self._insert_ignore(jobs).values(
                    id=job_id, namespace=namespace, tenant=tenant, idempotency_key=idempotency_key, body_hash=h,
                    request_hash=request_hash, state="queued", model=job.options.model,
                    students=len(job.submissions), items_total=len(rows), regrade_of=regrade_of, trace_context=tc,
                    created_at=now, updated_at=now).returning(jobs.c.id)
                if conn.execute(ins).first() is None:  # the key exists (rowcount is -1 on psycopg)
                    replay = self._replay(conn, namespace, tenant, idempotency_key, h)
                    assert replay is not None
                    return replay, False
            else:
                conn.execute(jobs.insert().values(
                    id=job_id, namespace=namespace, tenant=tenant, body_hash=h, state="queued", model=job.options.model,
                    students=len(job.submissions), items_total=len(rows), regrade_of=regrade_of, trace_context=tc,
                    created_at=now, updated_at=now))
            conn.execute(job_bodies.insert().values(job_id=job_id, body=body))
            for k in range(0, len(rows), 5000):
                conn.execute(items.insert(), rows[k:k + 5000])
            if (forecast := self._forecast(conn, namespace, job.options.model, job.options.review_target)) is not None:
                conn.execute(jobs.update().where(jobs.c.id == job_id).values(review_plan=forecast.model_dump_json()))
            return self._status(conn, job_id), True

    def _replay(self, conn, namespace: str, tenant: str, idempotency_key: str, body_hash: str) -> JobStatus | None:
        """The job ``idempotency_key`` names, if any. Raises ``ConflictError`` if its body differs."""
        existing = conn.execute(sa.select(jobs.c.id, jobs.c.body_hash).where(
            jobs.c.namespace == namespace, jobs.c.tenant == tenant, jobs.c.idempotency_key == idempotency_key)).first()
        if existing is None:
            return None
        if existing.body_hash != body_hash:
            raise ConflictError("idempotency key was already used with a different request body",
                                param="idempotency_key")
        return self._status(conn, existing.id)

    def replay_request(self, idempotency_key: str, request_hash: str, namespace: str = "raygrade",
                       tenant: str = DEFAULT_TENANT) -> JobStatus | None:
        """The job ``idempotency_key`` names if it was accepted from the same request as sent
        (``request_hash``, :meth:`GradingJob.request_hash`), else ``None``: no such key, another request,
        or a job accepted without the hash (then :meth:`create_job` compares the stored bodies
        and raises ``ConflictError`` where they differ). Reads only: a replay is never refused
        by a quota, and its pages are not resolved again (the files they name may be gone)."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(jobs.c.id, jobs.c.request_hash).where(
                jobs.c.namespace == namespace, jobs.c.tenant == tenant,
                jobs.c.idempotency_key == idempotency_key)).first()
            if row is None or row.request_hash != request_hash:
                return None
            return self._status(conn, row.id)

    def trace_context(self, job_id: str) -> dict[str, str] | None:
        """The W3C headers of the trace the job's submission joined, or ``None`` (none was
        recording, or the job predates revision 0009). Raises ``NotFoundError``."""
        with self.engine.connect() as conn:
            row = self._job_row(conn, job_id)
        return json.loads(row["trace_context"]) if row["trace_context"] else None

    def get_job(self, job_id: str) -> GradingJob:
        """The job as stored: page images are :class:`StoredImage` references (:func:`raygrade.blobs.inline`)."""
        with self.engine.connect() as conn:
            self._job_row(conn, job_id)  # NotFoundError for an unknown id
            return self._job_body(conn, job_id)

    def status(self, job_id: str, tenant: str | None = None) -> JobStatus:
        """The job's state and progress; with ``tenant``, ``NotFoundError`` unless it is that tenant's."""
        with self.engine.connect() as conn:
            return self._status(conn, job_id, tenant)

    def list_jobs(self, namespace: str, tenant: str, *, state: JobState | None = None, limit: int = 20,
                  after: str | None = None) -> tuple[list[JobStatus], bool]:
        """The tenant's jobs in ``namespace``, newest first: ``(up to limit jobs, whether more follow)``.

        ``after`` is a job id from a previous page (its ``last_id``): the jobs created before it.

        Raises:
            NotFoundError: ``after`` is not one of the tenant's jobs.
        """
        q = sa.select(jobs).where(jobs.c.namespace == namespace, jobs.c.tenant == tenant)
        if state is not None:
            q = q.where(jobs.c.state == state.value)
        with self.engine.connect() as conn:
            if after is not None:
                a = self._job_row(conn, after, tenant=tenant)
                q = q.where(sa.or_(jobs.c.created_at < a["created_at"],
                                   sa.and_(jobs.c.created_at == a["created_at"], jobs.c.id < a["id"])))
            rows = conn.execute(q.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit + 1)).mappings()
            out = [self._status_of(r) for r in rows]
        return out[:limit], len(out) > limit

    def unfinished_jobs(self, namespace: str = "raygrade", *, queued_for_s: float = 0.0) -> list[str]:
        """Ids of the namespace's jobs accepted but not in a terminal state, oldest first
        (what a restart resumes); ``queued_for_s``: only queued jobs created at least that many
        seconds ago (younger ones are on their way to a batcher with the ingress's nudge)."""
        queued = jobs.c.state == "queued"
        if queued_for_s > 0:
            queued = sa.and_(queued, jobs.c.created_at <= self._clock() - queued_for_s)
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(jobs.c.id).where(jobs.c.namespace == namespace,
                                                                sa.or_(jobs.c.state == "running", queued))
                                     .order_by(jobs.c.created_at)).scalars())

    def finish_if_complete(self, job_id: str) -> JobStatus | None:
        """Apply the job's completion policy; if it is met, make the job terminal.

        Terminal state: ``succeeded`` (every item graded), ``partial`` (some graded),
        ``failed`` (none). On finishing: pending items (a quorum was reached) are
        cancelled with ``not_graded``, open batches cancelled, the least confident
        ``review_share`` of the grades flagged ``needs_review``, a regrade's grades merged
        into the job it regrades (:meth:`_merge_regrade`), and the webhook queued.

        Returns:
            The terminal status, or ``None`` while the job is not complete.
        """
        with self.engine.begin() as conn:
            j = self._job_row(conn, job_id, lock=True)
            if j["state"] != "running":
                return self._status(conn, job_id) if JobState(j["state"]).terminal else None
            job = self._job_body(conn, job_id)
            open_batches = conn.execute(sa.select(sa.func.count()).where(
                batches.c.job_id == job_id, batches.c.state.in_(sources(BATCH_TRANSITIONS, "cancelled")))).scalar_one()
            total, graded = j["items_total"], j["items_graded"]
            pending = total - graded - j["items_failed"] - j["items_cancelled"]
            policy = job.options.completion
            quorum = policy.rule == "quorum" and graded >= policy.min_graded_share * total
            if pending and open_batches and not quorum:
                return None
            if pending or open_batches:  # else nothing is left to cancel (the counters say so)
                self._close(conn, job_id, "not_graded", "the job completed without this item "
                            + ("(quorum reached)" if quorum else "(no batch left to grade it)"))
            self._flag_review(conn, job_id, job)
            errors = json.loads(j["errors"])
            failed = total - graded
            state = "succeeded" if failed == 0 and not errors else ("partial" if graded else "failed")
            check_transition(JOB_TRANSITIONS, "job", "running", state)
            self._set_job_state(conn, job_id, state, finished_at=self._clock())
            if j["regrade_of"]:
                self._merge_regrade(conn, job_id, j["regrade_of"])
            self._queue_webhook(conn, job_id, job)
            return self._status(conn, job_id)

    def _close(self, conn, job_id: str, error_type: str, message: str, item_state: str = "cancelled") -> None:
        now = self._clock()
        n = conn.execute(items.update().where(items.c.job_id == job_id,
                                              items.c.state.in_(sources(ITEM_TRANSITIONS, item_state)))
                         .values(state=item_state, error_type=error_type, error_message=message,
                                 updated_at=now)).rowcount
        self._count(conn, job_id, **{f"items_{item_state}": n})
        conn.execute(batches.update().where(batches.c.job_id == job_id,
                                            batches.c.state.in_(sources(BATCH_TRANSITIONS, "cancelled")))
                     .values(state="cancelled", owner=None, lease_expires_at=None, updated_at=now))

    def fail_job(self, job_id: str, error: GradingErrorItem) -> JobStatus:
        """End a job that cannot go on (``queued | running → failed``); pending items fail with ``error``'s type."""
        with self.engine.begin() as conn:
            j = self._job_row(conn, job_id, lock=True)
            check_transition(JOB_TRANSITIONS, "job", j["state"], "failed")
            self._close(conn, job_id, error.type, error.message, item_state="failed")
            errs = json.loads(j["errors"]) + [error.model_dump(mode="json")]
            graded = j["items_graded"]
            self._set_job_state(conn, job_id, "partial" if graded and j["state"] == "running" else "failed",
                                errors=json.dumps(errs), finished_at=self._clock())
            if j["regrade_of"] and graded:
                self._merge_regrade(conn, job_id, j["regrade_of"])
            self._queue_webhook(conn, job_id, self._job_body(conn, job_id))
            return self._status(conn, job_id)

    def cancel(self, job_id: str, tenant: str | None = None) -> JobStatus:
        """Cancel a queued or running job: pending items and open batches are cancelled;
        grades already written stay. In-flight batches finish but write nothing.

        Raises:
            IllegalTransitionError: the job already ended.
        """
        with self.engine.begin() as conn:
            j = self._job_row(conn, job_id, lock=True, tenant=tenant)
            check_transition(JOB_TRANSITIONS, "job", j["state"], "cancelled")
            self._close(conn, job_id, "cancelled", "the job was cancelled")
            self._set_job_state(conn, job_id, "cancelled", finished_at=self._clock())
            self._queue_webhook(conn, job_id, self._job_body(conn, job_id))
            return self._status(conn, job_id)

    def results(self, job_id: str, tenant: str | None = None) -> JobResults:
        """Grades in submission and question order, and errors grouped per (student, type, batch).

        Each grade's ``score`` is final: a teacher's review replaces the model's score there
        (``graded_by: teacher``), and ``model_score`` keeps the model's."""
        with self.engine.connect() as conn:
            j = self._job_row(conn, job_id, tenant=tenant)
            rows = conn.execute(sa.select(items).where(items.c.job_id == job_id, items.c.state != "pending")
                                .order_by(items.c.seq)).mappings().all()
            out: list[GradeResult] = []
            errs: dict[tuple[str, str | None, str | None, str | None], list[str]] = {}
            for r in rows:
                if r["state"] == "graded":
                    out.append(final_result(r))
                else:
                    key = (r["student_id"], r["error_type"], r["error_message"], r["batch_id"])
                    errs.setdefault(key, []).append(r["question_id"])
            errors = [GradingErrorItem.model_validate(e) for e in json.loads(j["errors"])]
            errors += [GradingErrorItem(student_ids=[sid], question_ids=qids, type=t or "error", message=m or "",
                                        batch_id=bid) for (sid, t, m, bid), qids in errs.items()]
            share = self._job_options(conn, job_id).review_audit_share
            recalibration = None
            if share:
                out, recalibration = with_audits(job_id, share, out)
            return JobResults(id=job_id, state=JobState(j["state"]), results=out, errors=errors,
                              usage=Usage(prompt_tokens=j["prompt_tokens"], completion_tokens=j["completion_tokens"]),
                              review_agreement=review_agreement(out), recalibration=recalibration)

    def replicas(self, job_id: str, tenant: str | None = None) -> dict[str, int]:
        """Batches completed per grader replica for this job."""
        with self.engine.connect() as conn:
            self._job_row(conn, job_id, tenant=tenant)
            return dict(conn.execute(sa.select(batches.c.replica, sa.func.count()).where(
                batches.c.job_id == job_id, batches.c.state == "done", batches.c.replica.is_not(None))
                .group_by(batches.c.replica)).all())

    def gauges(self, namespace: str = "raygrade") -> dict[str, Any]:
        """For the metrics: the namespace's jobs by state and its pending batches (the queue).

        Returns:
            ``{"jobs": {state: n}, "batches_pending": n}``; two indexed aggregates.
        """
        with self.engine.connect() as conn:
            by_state = sa.select(jobs.c.state, sa.func.count()).where(jobs.c.namespace == namespace)
            counts: dict[str, int] = {s: n for s, n in conn.execute(by_state.group_by(jobs.c.state)).all()}
            queue = batches.join(jobs, batches.c.job_id == jobs.c.id)
            pending = conn.execute(sa.select(sa.func.count()).select_from(queue)
                                   .where(jobs.c.namespace == namespace, jobs.c.state == "running",
                                          batches.c.state == "pending")).scalar_one()
        return {"jobs": {s.value: counts.get(s.value, 0) for s in JobState}, "batches_pending": int(pending)}

    def failure_counts(self, job_id: str) -> dict[str, int]:
        """Failed items of a job by error type (once, when it ends: for the metrics)."""
        with self.engine.connect() as conn:
            return {t or "error": n for t, n in conn.execute(
                sa.select(items.c.error_type, sa.func.count())
                .where(items.c.job_id == job_id, items.c.state == "failed")
                .group_by(items.c.error_type)).all()}

    def batch_report(self, job_id: str) -> list[dict[str, Any]]:
        """Per batch: id, state, attempts (leases), grader losses, duplicates dropped (for
        operators and chaos tests)."""
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                sa.select(batches.c.id, batches.c.state, batches.c.attempts, batches.c.grader_losses,
                          batches.c.duplicates_dropped)
                .where(batches.c.job_id == job_id).order_by(batches.c.seq)).mappings()]
