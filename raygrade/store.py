"""The durable job store: jobs, their items, batches and webhooks in SQL.

One :class:`JobStore` over SQLAlchemy Core serves both back ends: SQLite (a file on
the head node, the embedded default) and PostgreSQL (clusters). Everything the
service has accepted is in the store before anyone acts on it, and every write is
idempotent, so any process may die at any point and the work resumes from here.

State machines (a transition not listed raises :class:`IllegalTransitionError`)::

    job:    queued → running → succeeded | partial | failed;   queued | running → cancelled | failed
    batch:  pending → leased → done;   leased → pending (lease released or expired);
            pending | leased → cancelled
    item:   pending → graded | failed | cancelled            (one per student × question)

Exactly-once grades: a job's items are created with the job; a grade is written by
compare-and-swap (``UPDATE … WHERE state = 'pending'``), so a batch graded twice (a
re-dispatch after a lost grader, two batchers after a lease expired) writes each
item once and the second copy is counted as dropped. Batch ids are deterministic
(:func:`raygrade.planner.batch_key`), so a re-planned job inserts nothing new.

Leases: a batcher leases a batch for ``lease_s`` seconds of wall-clock time (stored
as Unix seconds, so they survive a restart of the whole Ray cluster) and renews the
lease while it waits; a batch whose lease expired is leased again by whoever asks.

The outbox: the job row in state ``queued`` is the record that work is to be done;
the batcher derives dispatch from the store, never from a message that could be
lost. Webhooks are rows written in the same transaction as the job's terminal state.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from raygrade.batch import BatchOutcome, GradeBatch
from raygrade.blobs import BlobStore, default_blob_uri, externalize
from raygrade.errors import ConflictError, IllegalTransitionError, NotFoundError
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
from raygrade.review import review_cut

JOB_TRANSITIONS: dict[str, set[str]] = {
    "queued": {"running", "cancelled", "failed"},
    "running": {"succeeded", "partial", "failed", "cancelled"},
    "succeeded": set(), "partial": set(), "failed": set(), "cancelled": set(),
}
BATCH_TRANSITIONS: dict[str, set[str]] = {
    "pending": {"leased", "cancelled"},
    "leased": {"done", "pending", "cancelled", "leased"},  # leased → leased: renewal / takeover after expiry
    "done": set(), "cancelled": set(),
}
ITEM_TRANSITIONS: dict[str, set[str]] = {
    "pending": {"graded", "failed", "cancelled"},
    "graded": set(), "failed": set(), "cancelled": set(),
}


def check_transition(machine: dict[str, set[str]], kind: str, current: str, new: str) -> None:
    """Raise :class:`IllegalTransitionError` unless ``current → new`` is allowed in ``machine``."""
    if new not in machine.get(current, set()):
        raise IllegalTransitionError(f"{kind} cannot go from {current!r} to {new!r}", param="state")


def _sources(machine: dict[str, set[str]], new: str) -> list[str]:
    return [s for s, targets in machine.items() if new in targets]


#: Job progress counters (revision 0002 added and backfilled them).
COUNTER_COLUMNS = ("items_graded", "items_failed", "items_cancelled", "items_needs_review", "batches_done",
                   "batches_redispatched")

metadata = sa.MetaData()

jobs = sa.Table(
    "raygrade_jobs", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("namespace", sa.String(128), nullable=False, server_default="raygrade"),
    sa.Column("idempotency_key", sa.String(256), nullable=True),
    sa.Column("body_hash", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("model", sa.String(256)),
    sa.Column("students", sa.Integer, nullable=False),
    sa.Column("items_total", sa.Integer, nullable=False),
    sa.Column("batches_total", sa.Integer, nullable=False, server_default="0"),
    sa.Column("prompt_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("completion_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("errors", sa.Text, nullable=False, server_default="[]"),  # job-wide GradingErrorItems
    # Progress counters, kept in the same transactions as the item and batch changes they
    # count, so status() reads one row whatever the job's size.
    *(sa.Column(c, sa.Integer, nullable=False, server_default="0") for c in COUNTER_COLUMNS),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.Column("updated_at", sa.Float, nullable=False),
    # Idempotency keys are per application (a NULL key never conflicts).
    sa.UniqueConstraint("namespace", "idempotency_key", name="raygrade_jobs_namespace_key"),
    sa.Index("raygrade_jobs_namespace_state", "namespace", "state"),
)
# The job's body (questions, rubric, page references) apart from the row every status,
# lease and completion reads or updates: that row stays a few hundred bytes at any job size.
job_bodies = sa.Table(
    "raygrade_job_bodies", metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("body", sa.Text, nullable=False),
)
items = sa.Table(
    "raygrade_items", metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("student_id", sa.String(256), primary_key=True),
    sa.Column("question_id", sa.String(256), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("batch_id", sa.String(96)),
    sa.Column("result", sa.Text),
    sa.Column("confidence", sa.Float),
    sa.Column("needs_review", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("error_type", sa.String(64)),
    sa.Column("error_message", sa.Text),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("raygrade_items_job_state", "job_id", "state"),
    sa.Index("raygrade_items_job_batch", "job_id", "batch_id", "state"),  # a batch's pending items
)
batches = sa.Table(
    "raygrade_batches", metadata,
    sa.Column("id", sa.String(96), primary_key=True),
    sa.Column("job_id", sa.String(64), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("owner", sa.String(96)),
    sa.Column("lease_expires_at", sa.Float),
    sa.Column("replica", sa.String(128)),
    sa.Column("duplicates_dropped", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("raygrade_batches_job_state", "job_id", "state"),
    sa.Index("raygrade_batches_job_state_seq", "job_id", "state", "seq"),
)
webhooks = sa.Table(
    "raygrade_webhooks", metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending → delivered | failed
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("last_error", sa.String(512)),
    sa.Column("owner", sa.String(96)),
    sa.Column("lease_expires_at", sa.Float),
)


def create_engine(url: str) -> sa.Engine:
    """An engine for ``url``; SQLite files get their folder, WAL and a busy timeout."""
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(conn, _record):
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


#: Alembic's version table for the job store (named so that it cannot collide with an
#: application's own Alembic history in the same PostgreSQL database).
VERSION_TABLE = "raygrade_alembic_version"
#: The revision that stores made before the store used Alembic are stamped with.
_PRE_ALEMBIC_REVISION = "0001"
_MIGRATION_LOCK = 0x7261796772616465  # "raygrade": PostgreSQL advisory lock key
_migrating = threading.Lock()  # Alembic's op/context proxies are module globals: one upgrade per process


def migrate(engine: sa.Engine) -> list[str]:
    """Create or upgrade the job store's schema to the newest Alembic revision; returns the revisions applied.

    The revisions are in :mod:`raygrade.migrations`. A new database gets every revision in
    order; a store made before the store used Alembic (tables but no version table) is
    stamped with the first revision and upgraded from there. Safe to call from several
    processes at once: on PostgreSQL the upgrade runs under a transaction-scoped advisory
    lock, so the second caller finds the schema current and applies nothing; SQLite stores
    have one writer process (the registry replica on the head node), and threads of one
    process take turns.

    Raises:
        alembic.util.CommandError: the database carries a revision this raygrade does not
            know (it was upgraded by a newer raygrade).
    """
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", "raygrade:migrations")
    script = ScriptDirectory.from_config(cfg)
    with _migrating, engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        current = context.get_current_revision()
        if current is None and jobs.name in sa.inspect(conn).get_table_names():
            context.stamp(script, _PRE_ALEMBIC_REVISION)
            current = _PRE_ALEMBIC_REVISION
        head = script.get_current_head()
        if current == head:
            return []
        pending = [r.revision for r in script.iterate_revisions(head, current)][::-1]
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return pending


class JobStore:
    """Jobs, items, batches and webhooks in SQLite or PostgreSQL.

    Args:
        url: SQLAlchemy URL (``sqlite:///path.db``, ``postgresql+psycopg://…``).
        clock: Wall clock, Unix seconds (injected in tests).

    Every method is one transaction. Methods raise :class:`NotFoundError` for an
    unknown job id and :class:`IllegalTransitionError` for a disallowed state change.
    """

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time, blob_uri: str | None = None):
        self.engine = create_engine(url)
        self.dialect = self.engine.dialect.name
        self._clock = clock
        self.blobs = BlobStore(blob_uri or default_blob_uri(url))
        migrate(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def externalize(self, job: GradingJob) -> GradingJob:
        """``job`` with its page images in this store's blob store (:func:`raygrade.blobs.externalize`).

        Raises:
            InvalidRequestError: a page image Pillow cannot read (HTTP 400, naming the page).
        """
        return externalize(job, self.blobs)

    # ------------------------------------------------------------------ helpers
    def _insert_ignore(self, table: sa.Table):
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table).on_conflict_do_nothing()

    def _job_row(self, conn, job_id: str, *, lock: bool = False):
        q = sa.select(jobs).where(jobs.c.id == job_id)
        if lock and self.dialect == "postgresql":
            q = q.with_for_update()
        row = conn.execute(q).mappings().first()
        if row is None:
            raise NotFoundError(f"no job with id {job_id!r}", param="job_id")
        return row

    def _set_job_state(self, conn, job_id: str, new: str, **values) -> bool:
        """CAS the job into ``new`` from any state allowed to reach it; False if none matched."""
        res = conn.execute(jobs.update().where(jobs.c.id == job_id, jobs.c.state.in_(_sources(JOB_TRANSITIONS, new)))
                           .values(state=new, updated_at=self._clock(), **values))
        return res.rowcount == 1

    # ------------------------------------------------------------------ jobs
    def create_job(self, job: GradingJob, idempotency_key: str | None = None, namespace: str = "raygrade"
                   ) -> tuple[JobStatus, bool]:
        """Record a job and its items (state ``queued``), or return the job its key names.

        ``namespace`` is the application's (``RaygradeArgs.namespace``): several raygrade
        applications can share one database; each resumes only its own jobs, and
        idempotency keys are unique per namespace.

        Returns:
            ``(status, created)``; ``created`` is False for a replay of the same key and body.

        Raises:
            ConflictError: the key was used with a different body (HTTP 409).
        """
        job = self.externalize(job)
        body = job.model_dump_json()
        h = hashlib.sha256(body.encode()).hexdigest()
        now = self._clock()
        job_id = f"job_{uuid.uuid4().hex}"
        rows = []
        for i, sub in enumerate(job.submissions):
            for j, q in enumerate(job.questions_for(sub)):
                rows.append({"job_id": job_id, "student_id": sub.student_id, "question_id": q.id,
                             "seq": i * 10_000 + j, "state": "pending", "updated_at": now})
        with self.engine.begin() as conn:
            if idempotency_key is not None:
                ins = self._insert_ignore(jobs).values(
                    id=job_id, namespace=namespace, idempotency_key=idempotency_key, body_hash=h,
                    state="queued", model=job.options.model, students=len(job.submissions), items_total=len(rows),
                    created_at=now, updated_at=now).returning(jobs.c.id)
                if conn.execute(ins).first() is None:  # the key exists (rowcount is -1 on psycopg)
                    existing = conn.execute(sa.select(jobs.c.id, jobs.c.body_hash)
                                            .where(jobs.c.namespace == namespace,
                                                   jobs.c.idempotency_key == idempotency_key)).first()
                    if existing.body_hash != h:
                        raise ConflictError("idempotency key was already used with a different request body",
                                            param="idempotency_key")
                    return self._status(conn, existing.id), False
            else:
                conn.execute(jobs.insert().values(
                    id=job_id, namespace=namespace, body_hash=h, state="queued", model=job.options.model,
                    students=len(job.submissions), items_total=len(rows), created_at=now, updated_at=now))
            conn.execute(job_bodies.insert().values(job_id=job_id, body=body))
            for k in range(0, len(rows), 5000):
                conn.execute(items.insert(), rows[k:k + 5000])
            return self._status(conn, job_id), True

    def get_job(self, job_id: str) -> GradingJob:
        """The job as stored: page images are :class:`StoredImage` references (:func:`raygrade.blobs.inline`)."""
        with self.engine.connect() as conn:
            self._job_row(conn, job_id)  # NotFoundError for an unknown id
            return self._job_body(conn, job_id)

    @staticmethod
    def _job_body(conn, job_id: str) -> GradingJob:
        return GradingJob.model_validate_json(
            conn.execute(sa.select(job_bodies.c.body).where(job_bodies.c.job_id == job_id)).scalar_one())

    def status(self, job_id: str) -> JobStatus:
        with self.engine.connect() as conn:
            return self._status(conn, job_id)

    def _status(self, conn, job_id: str) -> JobStatus:
        """One row: the job's counters (kept by every write that changes them)."""
        j = self._job_row(conn, job_id)
        return JobStatus(
            id=job_id, state=JobState(j["state"]), created_at=j["created_at"], finished_at=j["finished_at"],
            model=j["model"], usage=Usage(prompt_tokens=j["prompt_tokens"], completion_tokens=j["completion_tokens"]),
            progress=JobProgress(students=j["students"], items_total=j["items_total"],
                                 items_graded=j["items_graded"], items_failed=j["items_failed"],
                                 items_needs_review=j["items_needs_review"], items_cancelled=j["items_cancelled"],
                                 batches_total=j["batches_total"], batches_done=j["batches_done"],
                                 batches_redispatched=j["batches_redispatched"]))

    def _count(self, conn, job_id: str, **deltas: int) -> None:
        """Add ``deltas`` to the job's counters (in the caller's transaction)."""
        if deltas := {k: v for k, v in deltas.items() if v}:
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(
                **{k: jobs.c[k] + v for k, v in deltas.items()}))

    def unfinished_jobs(self, namespace: str = "raygrade") -> list[str]:
        """Ids of the namespace's jobs accepted but not in a terminal state, oldest first
        (what a restart resumes)."""
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(jobs.c.id).where(jobs.c.namespace == namespace,
                                                                jobs.c.state.in_(["queued", "running"]))
                                     .order_by(jobs.c.created_at)).scalars())

    def record_plan(self, job_id: str, planned: list[GradeBatch], errors: list[GradingErrorItem],
                    model: str | None) -> bool:
        """Record a job's batches and planning/reading errors, ``queued → running``.

        Idempotent: only the first plan of a job is recorded (``False`` after that, or
        when the job is no longer queued, e.g. cancelled meanwhile).
        """
        now = self._clock()
        with self.engine.begin() as conn:
            if not self._set_job_state(conn, job_id, "running", model=model, batches_total=len(planned)):
                self._job_row(conn, job_id)  # NotFoundError for an unknown id
                return False
            if planned:
                conn.execute(self._insert_ignore(batches), [
                    {"id": b.batch_id, "job_id": job_id, "seq": k, "state": "pending", "payload": b.model_dump_json(),
                     "updated_at": now} for k, b in enumerate(planned)])
                # Each item learns its batch, so completing a batch touches only its own items.
                conn.execute(items.update().where(
                    items.c.job_id == sa.bindparam("j"), items.c.student_id == sa.bindparam("s"),
                    items.c.question_id == sa.bindparam("q")).values(batch_id=sa.bindparam("b")),
                    [{"j": job_id, "s": st.student_id, "q": q, "b": b.batch_id}
                     for b in planned for st in b.students for q in st.question_ids])
            self._count(conn, job_id, items_failed=self._fail_items(conn, job_id, errors, None))
            return True

    def _fail_items(self, conn, job_id: str, errors: list[GradingErrorItem], batch_id: str | None) -> int:
        """Fail the still-pending items ``errors`` name; returns how many changed (the caller counts them)."""
        now = self._clock()
        n = 0
        for e in errors:
            if not e.student_ids:  # job-wide
                continue
            n += conn.execute(items.update().where(
                items.c.job_id == job_id, items.c.student_id.in_(e.student_ids),
                items.c.question_id.in_(e.question_ids), items.c.state.in_(_sources(ITEM_TRANSITIONS, "failed")),
            ).values(state="failed", error_type=e.type, error_message=e.message[:2000], batch_id=batch_id,
                     updated_at=now)).rowcount
        return n

    # ------------------------------------------------------------------ batches
    def lease_batches(self, job_id: str, owner: str, lease_s: float, limit: int) -> list[GradeBatch]:
        """Lease up to ``limit`` of the job's pending batches, or leased ones whose lease expired.

        Each lease increments the batch's ``attempts``; the caller sends the batch to a
        grader and then calls :meth:`complete_batch`, :meth:`release_batch` or renews.
        """
        if limit <= 0:
            return []
        now = self._clock()
        out = []
        with self.engine.begin() as conn:
            if conn.execute(sa.select(jobs.c.state).where(jobs.c.id == job_id)).scalar() != "running":
                return []
            leasable = sa.or_(batches.c.state == "pending",
                              sa.and_(batches.c.state == "leased", batches.c.lease_expires_at < now))
            cols = (batches.c.id, batches.c.attempts, batches.c.payload)
            # Expired leases first (a lost batcher's work), then pending batches in plan order:
            # each an index range on (job_id, state, seq), never a scan of the job.
            cands = conn.execute(sa.select(*cols).where(
                batches.c.job_id == job_id, batches.c.state == "leased", batches.c.lease_expires_at < now)
                .order_by(batches.c.seq).limit(limit)).all()
            if len(cands) < limit:
                cands += conn.execute(sa.select(*cols).where(batches.c.job_id == job_id, batches.c.state == "pending")
                                      .order_by(batches.c.seq).limit(limit - len(cands))).all()
            if not cands:
                return []
            # One compare-and-swap for all candidates: a batch another batcher leased meanwhile
            # is not returned (it no longer matches ``leasable``).
            got = conn.execute(batches.update().where(batches.c.id.in_([c.id for c in cands]), leasable).values(
                state="leased", owner=owner, lease_expires_at=now + lease_s,
                attempts=batches.c.attempts + 1, updated_at=now).returning(batches.c.id)).scalars().all()
            got = set(got)
            redispatched = 0
            for c in cands:  # plan order
                if c.id in got:
                    out.append(GradeBatch.model_validate_json(c.payload))
                    redispatched += c.attempts > 0
            self._count(conn, job_id, batches_redispatched=redispatched)
        return out

    def renew_leases(self, owner: str, lease_s: float, batch_ids: list[str] | None = None) -> int:
        """Extend the leases ``owner`` holds (only on ``batch_ids`` when given: the batches
        still in flight, so a lease whose task was lost can expire); returns how many."""
        now = self._clock()
        cond = [batches.c.owner == owner, batches.c.state == "leased"]
        if batch_ids is not None:
            cond.append(batches.c.id.in_(batch_ids))
        with self.engine.begin() as conn:
            return conn.execute(batches.update().where(*cond)
                                .values(lease_expires_at=now + lease_s, updated_at=now)).rowcount

    def batch_attempts(self, batch_id: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(batches.c.attempts).where(batches.c.id == batch_id)).scalar() or 0)

    def release_batch(self, batch_id: str, owner: str) -> bool:
        """``leased → pending`` (the grader was lost); only the lease's owner can release it."""
        with self.engine.begin() as conn:
            return conn.execute(batches.update().where(batches.c.id == batch_id, batches.c.owner == owner,
                                                       batches.c.state == "leased")
                                .values(state="pending", owner=None, lease_expires_at=None,
                                        updated_at=self._clock())).rowcount == 1

    def complete_batch(self, job_id: str, outcome: BatchOutcome, replica: str | None = None) -> dict[str, int]:
        """Write a graded batch: each item by compare-and-swap from ``pending``, then ``batch → done``.

        A batch completed before (another owner after a lease expiry, a replayed call)
        writes nothing new: its items are no longer pending. Items of the batch that
        the outcome neither graded nor reported fail with ``missing_output``.

        Returns:
            ``{"written": n, "dropped": n}``: grades stored, and grades dropped because
            their item was already done.
        """
        now = self._clock()
        written = dropped = 0
        with self.engine.begin() as conn:
            b = conn.execute(sa.select(batches.c.state)
                             .where(batches.c.id == outcome.batch_id, batches.c.job_id == job_id)).first()
            if b is None:
                raise NotFoundError(f"no batch {outcome.batch_id!r} in job {job_id!r}", param="batch_id")
            if outcome.results:  # one statement for the batch's grades, each a compare-and-swap from pending
                res = conn.execute(items.update().where(
                    items.c.job_id == job_id, items.c.student_id == sa.bindparam("s"),
                    items.c.question_id == sa.bindparam("q"),
                    # no IN (…): executemany cannot expand it
                    sa.or_(*(items.c.state == st for st in _sources(ITEM_TRANSITIONS, "graded"))),
                ).values(state="graded", result=sa.bindparam("r"), confidence=sa.bindparam("c"),
                         batch_id=outcome.batch_id, updated_at=now),
                    [{"s": r.student_id, "q": r.question_id, "r": r.model_dump_json(), "c": r.confidence}
                     for r in outcome.results])
                written = res.rowcount  # summed over the rows (supports_sane_multi_rowcount on both back ends)
                dropped = len(outcome.results) - written
            failed = self._fail_items(conn, job_id, outcome.errors, outcome.batch_id)
            # Items of this batch that the outcome neither graded nor reported (found by the
            # batch id each item got at planning; the payload is not read).
            failed += conn.execute(items.update().where(
                items.c.job_id == job_id, items.c.batch_id == outcome.batch_id,
                items.c.state.in_(_sources(ITEM_TRANSITIONS, "failed"))).values(
                state="failed", error_type="missing_output", error_message="the grader returned no grade for this item",
                updated_at=now)).rowcount
            moved = conn.execute(batches.update().where(
                batches.c.id == outcome.batch_id, batches.c.state.in_(_sources(BATCH_TRANSITIONS, "done")),
            ).values(state="done", replica=replica, owner=None, lease_expires_at=None,
                     duplicates_dropped=dropped, updated_at=now)).rowcount
            if moved:  # usage is counted once per batch, even if it was graded twice
                conn.execute(jobs.update().where(jobs.c.id == job_id).values(
                    prompt_tokens=jobs.c.prompt_tokens + outcome.usage.prompt_tokens,
                    completion_tokens=jobs.c.completion_tokens + outcome.usage.completion_tokens, updated_at=now))
            self._count(conn, job_id, items_graded=written, items_failed=failed, batches_done=moved)
        return {"written": written, "dropped": dropped}

    # ------------------------------------------------------------------ completion
    def finish_if_complete(self, job_id: str) -> JobStatus | None:
        """Apply the job's completion policy; if it is met, make the job terminal.

        Terminal state: ``succeeded`` (every item graded), ``partial`` (some graded),
        ``failed`` (none). On finishing: pending items (a quorum was reached) are
        cancelled with ``not_graded``, open batches cancelled, the least confident
        ``review_share`` of the grades flagged ``needs_review``, and the webhook queued.

        Returns:
            The terminal status, or ``None`` while the job is not complete.
        """
        with self.engine.begin() as conn:
            j = self._job_row(conn, job_id, lock=True)
            if j["state"] != "running":
                return self._status(conn, job_id) if JobState(j["state"]).terminal else None
            job = self._job_body(conn, job_id)
            open_batches = conn.execute(sa.select(sa.func.count()).where(
                batches.c.job_id == job_id, batches.c.state.in_(_sources(BATCH_TRANSITIONS, "cancelled")))).scalar_one()
            total, graded = j["items_total"], j["items_graded"]
            pending = total - graded - j["items_failed"] - j["items_cancelled"]
            policy = job.options.completion
            quorum = policy.rule == "quorum" and graded >= policy.min_graded_share * total
            if pending and open_batches and not quorum:
                return None
            self._close(conn, job_id, "not_graded", "the job completed without this item "
                        + ("(quorum reached)" if quorum else "(no batch left to grade it)"))
            self._flag_review(conn, job_id, job.options.review_share)
            errors = json.loads(j["errors"])
            failed = total - graded
            state = "succeeded" if failed == 0 and not errors else ("partial" if graded else "failed")
            check_transition(JOB_TRANSITIONS, "job", "running", state)
            self._set_job_state(conn, job_id, state, finished_at=self._clock())
            self._queue_webhook(conn, job_id, job)
            return self._status(conn, job_id)

    def _close(self, conn, job_id: str, error_type: str, message: str, item_state: str = "cancelled") -> None:
        now = self._clock()
        n = conn.execute(items.update().where(items.c.job_id == job_id,
                                              items.c.state.in_(_sources(ITEM_TRANSITIONS, item_state)))
                         .values(state=item_state, error_type=error_type, error_message=message, updated_at=now)).rowcount
        self._count(conn, job_id, **{f"items_{item_state}": n})
        conn.execute(batches.update().where(batches.c.job_id == job_id,
                                            batches.c.state.in_(_sources(BATCH_TRANSITIONS, "cancelled")))
                     .values(state="cancelled", owner=None, lease_expires_at=None, updated_at=now))

    def _flag_review(self, conn, job_id: str, share: float) -> None:
        rows = conn.execute(sa.select(items.c.student_id, items.c.question_id, items.c.confidence)
                            .where(items.c.job_id == job_id, items.c.state == "graded")
                            .order_by(items.c.seq)).all()
        flagged = review_cut([r.confidence for r in rows], share)
        if flagged:
            conn.execute(items.update().where(items.c.job_id == sa.bindparam("j"),
                                              items.c.student_id == sa.bindparam("s"),
                                              items.c.question_id == sa.bindparam("q")).values(needs_review=True),
                         [{"j": job_id, "s": rows[i].student_id, "q": rows[i].question_id} for i in sorted(flagged)])
        self._count(conn, job_id, items_needs_review=len(flagged))

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
            self._queue_webhook(conn, job_id, self._job_body(conn, job_id))
            return self._status(conn, job_id)

    def cancel(self, job_id: str) -> JobStatus:
        """Cancel a queued or running job: pending items and open batches are cancelled;
        grades already written stay. In-flight batches finish but write nothing.

        Raises:
            IllegalTransitionError: the job already ended.
        """
        with self.engine.begin() as conn:
            j = self._job_row(conn, job_id, lock=True)
            check_transition(JOB_TRANSITIONS, "job", j["state"], "cancelled")
            self._close(conn, job_id, "cancelled", "the job was cancelled")
            self._set_job_state(conn, job_id, "cancelled", finished_at=self._clock())
            self._queue_webhook(conn, job_id, self._job_body(conn, job_id))
            return self._status(conn, job_id)

    # ------------------------------------------------------------------ results
    def results(self, job_id: str) -> JobResults:
        """Grades in submission and question order, and errors grouped per (student, type, batch)."""
        with self.engine.connect() as conn:
            j = self._job_row(conn, job_id)
            rows = conn.execute(sa.select(items).where(items.c.job_id == job_id, items.c.state != "pending")
                                .order_by(items.c.seq)).mappings().all()
            out, errs = [], {}
            for r in rows:
                if r["state"] == "graded":
                    g = GradeResult.model_validate_json(r["result"])
                    out.append(g.model_copy(update={"needs_review": bool(r["needs_review"])}))
                else:
                    key = (r["student_id"], r["error_type"], r["error_message"], r["batch_id"])
                    errs.setdefault(key, []).append(r["question_id"])
            errors = [GradingErrorItem.model_validate(e) for e in json.loads(j["errors"])]
            errors += [GradingErrorItem(student_ids=[sid], question_ids=qids, type=t or "error", message=m or "",
                                        batch_id=bid) for (sid, t, m, bid), qids in errs.items()]
            return JobResults(id=job_id, state=JobState(j["state"]), results=out, errors=errors,
                              usage=Usage(prompt_tokens=j["prompt_tokens"], completion_tokens=j["completion_tokens"]))

    def replicas(self, job_id: str) -> dict[str, int]:
        """Batches completed per grader replica for this job."""
        with self.engine.connect() as conn:
            self._job_row(conn, job_id)
            return dict(conn.execute(sa.select(batches.c.replica, sa.func.count()).where(
                batches.c.job_id == job_id, batches.c.state == "done", batches.c.replica.is_not(None))
                .group_by(batches.c.replica)).all())

    def gauges(self, namespace: str = "raygrade") -> dict[str, Any]:
        """For the metrics: the namespace's jobs by state and its pending batches (the queue).

        Returns:
            ``{"jobs": {state: n}, "batches_pending": n}``; two indexed aggregates.
        """
        with self.engine.connect() as conn:
            counts = dict(conn.execute(sa.select(jobs.c.state, sa.func.count()).where(jobs.c.namespace == namespace)
                                       .group_by(jobs.c.state)).all())
            pending = conn.execute(sa.select(sa.func.count()).select_from(batches.join(jobs, batches.c.job_id == jobs.c.id))
                                   .where(jobs.c.namespace == namespace, jobs.c.state == "running",
                                          batches.c.state == "pending")).scalar_one()
        return {"jobs": {s: counts.get(s, 0) for s in JOB_TRANSITIONS}, "batches_pending": int(pending)}

    def failure_counts(self, job_id: str) -> dict[str, int]:
        """Failed items of a job by error type (once, when it ends: for the metrics)."""
        with self.engine.connect() as conn:
            return {t or "error": n for t, n in conn.execute(
                sa.select(items.c.error_type, sa.func.count()).where(items.c.job_id == job_id, items.c.state == "failed")
                .group_by(items.c.error_type)).all()}

    def batch_report(self, job_id: str) -> list[dict[str, Any]]:
        """Per batch: id, state, attempts, duplicates dropped (for operators and chaos tests)."""
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                sa.select(batches.c.id, batches.c.state, batches.c.attempts, batches.c.duplicates_dropped)
                .where(batches.c.job_id == job_id).order_by(batches.c.seq)).mappings()]

    # ------------------------------------------------------------------ webhooks
    def _queue_webhook(self, conn, job_id: str, job: GradingJob) -> None:
        if job.options.webhook_url:
            conn.execute(self._insert_ignore(webhooks).values(job_id=job_id, url=job.options.webhook_url,
                                                              state="pending", next_attempt_at=self._clock()))

    def lease_webhooks(self, owner: str, lease_s: float, limit: int = 16) -> list[tuple[str, str, int]]:
        """Due webhooks, leased to ``owner``: ``[(job_id, url, attempt number)]``."""
        now = self._clock()
        out = []
        with self.engine.begin() as conn:
            due = conn.execute(sa.select(webhooks.c.job_id, webhooks.c.url, webhooks.c.attempts).where(
                webhooks.c.state == "pending", webhooks.c.next_attempt_at <= now,
                sa.or_(webhooks.c.lease_expires_at.is_(None), webhooks.c.lease_expires_at < now)).limit(limit)).all()
            for w in due:
                if conn.execute(webhooks.update().where(
                        webhooks.c.job_id == w.job_id, webhooks.c.state == "pending",
                        sa.or_(webhooks.c.lease_expires_at.is_(None), webhooks.c.lease_expires_at < now))
                        .values(owner=owner, lease_expires_at=now + lease_s)).rowcount:
                    out.append((w.job_id, w.url, w.attempts + 1))
        return out

    def webhook_result(self, job_id: str, *, ok: bool, error: str | None = None, retry_in_s: float | None = None,
                       max_attempts: int = 8) -> str:
        """Record a delivery attempt; returns the webhook's new state (``delivered``, ``pending``, ``failed``)."""
        now = self._clock()
        with self.engine.begin() as conn:
            w = conn.execute(sa.select(webhooks.c.attempts).where(webhooks.c.job_id == job_id)).first()
            if w is None:
                raise NotFoundError(f"no webhook for job {job_id!r}", param="job_id")
            attempts = w.attempts + 1
            state = "delivered" if ok else ("failed" if attempts >= max_attempts else "pending")
            conn.execute(webhooks.update().where(webhooks.c.job_id == job_id).values(
                state=state, attempts=attempts, last_error=(error or "")[:500] or None, owner=None,
                lease_expires_at=None, next_attempt_at=now + (retry_in_s or 0.0)))
            return state

    def webhook(self, job_id: str) -> dict[str, Any] | None:
        """The webhook row of a job (state, attempts, last_error), or ``None``."""
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(webhooks).where(webhooks.c.job_id == job_id)).mappings().first()
            return dict(r) if r else None
