"""The store's engine, clock, blob store and the row helpers every part of it shares."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import sqlalchemy as sa

from raygrade.blobs import BlobStore, default_blob_uri, externalize
from raygrade.errors import NotFoundError, StorageError
from raygrade.protocol import GradingJob, JobOptions, JobProgress, JobState, JobStatus, JobWarning, Usage
from raygrade.store.schema import create_engine, job_bodies, jobs, migrate
from raygrade.store.states import JOB_TRANSITIONS, sources


class StoreCore:
    """Engine, clock and helpers; :class:`raygrade.store.JobStore` adds the operations.

    Args:
        url: SQLAlchemy URL (``sqlite:///path.db``, ``postgresql+psycopg://…``); the schema is
            created or upgraded on open (:func:`raygrade.store.schema.migrate`).
        clock: Wall clock, Unix seconds (injected in tests).
        blob_uri: Where page images go (default: a folder beside a SQLite file).
        migrate_schema: Create or upgrade the schema on open; ``False``: only check that it is
            the newest (a reader beside the registry, which migrates it) and raise
            ``StorageError`` if not.

    Raises:
        ConfigError: a URL :func:`~raygrade.store.schema.check_store_url` refuses.
        StorageError: the database cannot be reached or opened (one line, no password).
    """

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time, blob_uri: str | None = None,
                 migrate_schema: bool = True):
        self.engine = create_engine(url)
        self.dialect = self.engine.dialect.name
        self._clock = clock
        try:
            migrate(self.engine, upgrade=migrate_schema)
        except StorageError:
            self.engine.dispose()
            raise
        except sa.exc.OperationalError as exc:  # unreachable server, refused login, unreadable file
            self.engine.dispose()
            reason = " ".join(str(exc.orig or exc).split())[:300]
            raise StorageError(f"cannot open the job store at {self.engine.url.render_as_string(hide_password=True)}: "
                               f"{reason}") from None
        self.blobs = BlobStore(blob_uri or default_blob_uri(url), clock=clock)  # only once the store opened

    def close(self) -> None:
        self.engine.dispose()

    def externalize(self, job: GradingJob) -> GradingJob:
        """``job`` with its page images in this store's blob store (:func:`raygrade.blobs.externalize`).

        Raises:
            InvalidRequestError: a page image Pillow cannot read (HTTP 400, naming the page).
        """
        return externalize(job, self.blobs)
    def _insert(self, table: sa.Table):
        """``INSERT`` in this back end's dialect (with ``on_conflict_do_nothing/_do_update``)."""
        from sqlalchemy.dialects import postgresql, sqlite

        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    def _insert_ignore(self, table: sa.Table):
        """``INSERT … ON CONFLICT DO NOTHING`` in this back end's dialect."""
        return self._insert(table).on_conflict_do_nothing()

    def _job_row(self, conn, job_id: str, *, lock: bool = False, tenant: str | None = None):
        """The job's row; with ``tenant``, only if the job is that tenant's (another tenant's job
        is as unknown as a job that does not exist)."""
        q = sa.select(jobs).where(jobs.c.id == job_id)
        if tenant is not None:
            q = q.where(jobs.c.tenant == tenant)
        if lock and self.dialect == "postgresql":
            q = q.with_for_update()
        row = conn.execute(q).mappings().first()
        if row is None:
            raise NotFoundError(f"no job with id {job_id!r}", param="job_id")
        return row

    def _set_job_state(self, conn, job_id: str, new: str, **values) -> bool:
        """CAS the job into ``new`` from any state allowed to reach it; False if none matched."""
        res = conn.execute(jobs.update().where(jobs.c.id == job_id, jobs.c.state.in_(sources(JOB_TRANSITIONS, new)))
                           .values(state=new, updated_at=self._clock(), **values))
        return res.rowcount == 1
    @staticmethod
    def _job_body(conn, job_id: str) -> GradingJob:
        return GradingJob.model_validate_json(
            conn.execute(sa.select(job_bodies.c.body).where(job_bodies.c.job_id == job_id)).scalar_one())

    @staticmethod
    def _job_options(conn, job_id: str) -> JobOptions:
        """The job's options alone (its body is not validated: its submissions may be large)."""
        body = json.loads(conn.execute(sa.select(job_bodies.c.body).where(job_bodies.c.job_id == job_id)).scalar_one())
        return JobOptions.model_validate(body.get("options") or {})

    def _status(self, conn, job_id: str, tenant: str | None = None) -> JobStatus:
        """One row: the job's counters (kept by every write that changes them)."""
        return self._status_of(self._job_row(conn, job_id, tenant=tenant))

    @staticmethod
    def _status_of(j) -> JobStatus:
        return JobStatus(
            id=j["id"], tenant=j["tenant"], state=JobState(j["state"]), created_at=j["created_at"],
            finished_at=j["finished_at"], warnings=json.loads(j["warnings"] or "[]"), regrade_of=j["regrade_of"],
            review_plan=json.loads(j["review_plan"]) if j["review_plan"] else None,
            model=j["model"], usage=Usage(prompt_tokens=j["prompt_tokens"], completion_tokens=j["completion_tokens"]),
            progress=JobProgress(students=j["students"], items_total=j["items_total"],
                                 items_graded=j["items_graded"], items_failed=j["items_failed"],
                                 items_needs_review=j["items_needs_review"], items_cancelled=j["items_cancelled"],
                                 items_reviewed=j["items_reviewed"],
                                 batches_total=j["batches_total"], batches_done=j["batches_done"],
                                 batches_redispatched=j["batches_redispatched"]))

    def _add_warnings(self, conn, job_id: str, new: list[JobWarning]) -> None:
        """Add ``new`` to the job's warnings, once per (type, questions), in the caller's
        transaction (the job row locked on PostgreSQL: batches complete concurrently)."""
        j = self._job_row(conn, job_id, lock=True)
        have = [JobWarning.model_validate(w) for w in json.loads(j["warnings"] or "[]")]
        seen = {(w.type, tuple(w.question_ids)) for w in have}
        added = []
        for w in new:
            if (key := (w.type, tuple(w.question_ids))) not in seen:
                seen.add(key)
                added.append(w)
        if added:
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(
                warnings=json.dumps([w.model_dump(mode="json") for w in have + added])))

    def _count(self, conn, job_id: str, **deltas: int) -> None:
        """Add ``deltas`` to the job's counters (in the caller's transaction)."""
        if deltas := {k: v for k, v in deltas.items() if v}:
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(
                **{k: jobs.c[k] + v for k, v in deltas.items()}))

