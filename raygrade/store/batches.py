"""Plans, batch leases and completion: how batches move and items get their grades exactly once."""

from __future__ import annotations

import sqlalchemy as sa

from raygrade.batch import BatchOutcome, GradeBatch
from raygrade.errors import NotFoundError
from raygrade.protocol import GradingErrorItem
from raygrade.review import error_share
from raygrade.store.core import StoreCore
from raygrade.store.schema import batches, items, jobs
from raygrade.store.states import BATCH_TRANSITIONS, ITEM_TRANSITIONS, sources


class BatchLeases(StoreCore):
    """Recording a job's plan, leasing its batches to batchers, writing their outcomes."""

    def record_plan(self, job_id: str, planned: list[GradeBatch], errors: list[GradingErrorItem],
                    model: str | None, *, lease: tuple[str, float, int] | None = None) -> bool:
        """Record a job's batches and planning/reading errors, ``queued → running``.

        Idempotent: only the first plan of a job is recorded (``False`` after that, or
        when the job is no longer queued, e.g. cancelled meanwhile).

        ``lease``: ``(owner, lease_s, limit)``: the plan's first ``limit`` batches are recorded
        already leased to ``owner`` (``attempts`` 1), as :meth:`lease_batches` would lease them
        (see :meth:`plan_and_lease`).
        """
        now = self._clock()
        owner, lease_s, n_leased = lease if lease is not None else (None, 0.0, 0)
        with self.engine.begin() as conn:
            if not self._set_job_state(conn, job_id, "running", model=model, batches_total=len(planned)):
                self._job_row(conn, job_id)  # NotFoundError for an unknown id
                return False
            if planned:
                # No batch of the job can exist yet (the state's compare-and-swap above let only
                # this plan through), so each row is inserted as given.
                conn.execute(self._insert_ignore(batches), [
                    {"id": b.batch_id, "job_id": job_id, "seq": k, "payload": b.model_dump_json(), "updated_at": now,
                     **({"state": "leased", "owner": owner, "lease_expires_at": now + lease_s, "attempts": 1}
                        if k < n_leased else {"state": "pending", "owner": None, "lease_expires_at": None,
                                              "attempts": 0})}
                    for k, b in enumerate(planned)])
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
                items.c.question_id.in_(e.question_ids), items.c.state.in_(sources(ITEM_TRANSITIONS, "failed")),
            ).values(state="failed", error_type=e.type, error_message=e.message[:2000], batch_id=batch_id,
                     updated_at=now)).rowcount
        return n

    def plan_and_lease(self, job_id: str, planned: list[GradeBatch], errors: list[GradingErrorItem],
                       model: str | None, owner: str, lease_s: float, limit: int) -> list[GradeBatch]:
        """:meth:`record_plan`, then :meth:`lease_batches` of up to ``limit`` batches to ``owner``;
        returns the batches leased, in plan order. When this call records the plan, both happen
        in its one transaction (the first batches written already leased: one commit and four
        statements fewer than the two calls); when a plan was recorded before (by another
        batcher), its pending batches are leased as by :meth:`lease_batches`.

        Raises:
            NotFoundError: no job ``job_id``.
        """
        n = max(0, limit)
        if self.record_plan(job_id, planned, errors, model, lease=(owner, lease_s, n)):
            return planned[:n]
        return self.lease_batches(job_id, owner, lease_s, limit)

    # ------------------------------------------------------------------ batches
    def lease_batches(self, job_id: str, owner: str, lease_s: float, limit: int) -> list[GradeBatch]:
        """Lease up to ``limit`` of the job's pending batches, or leased ones whose lease expired.

        Each lease increments the batch's ``attempts``; the caller sends the batch to a
        grader and then calls :meth:`complete_batch`, :meth:`record_grader_loss` or renews.
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
            cands = list(conn.execute(sa.select(*cols).where(
                batches.c.job_id == job_id, batches.c.state == "leased", batches.c.lease_expires_at < now)
                .order_by(batches.c.seq).limit(limit)).all())
            if len(cands) < limit:
                cands += conn.execute(sa.select(*cols).where(batches.c.job_id == job_id, batches.c.state == "pending")
                                      .order_by(batches.c.seq).limit(limit - len(cands))).all()
            if not cands:
                return []
            # One compare-and-swap for all candidates: a batch another batcher leased meanwhile
            # is not returned (it no longer matches ``leasable``).
            got = set(conn.execute(batches.update().where(batches.c.id.in_([c.id for c in cands]), leasable).values(
                state="leased", owner=owner, lease_expires_at=now + lease_s,
                attempts=batches.c.attempts + 1, updated_at=now).returning(batches.c.id)).scalars().all())
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

    def record_grader_loss(self, batch_id: str, owner: str, max_losses: int) -> int | None:
        """A grader call for ``owner``'s leased batch ended without an answer (the replica died):
        count the loss and, while the batch has fewer than ``max_losses``, release it
        (``leased → pending``) to be leased again at once.

        Only lost grader calls count toward ``max_losses``: a lease taken over after a batcher
        died (:meth:`lease_batches` on an expired lease) is not the batch's fault.

        Returns:
            The batch's lost calls so far (this one included), or ``None`` when ``owner`` no
            longer holds its lease (another batcher took it over: nothing is changed).
        """
        mine = (batches.c.id == batch_id, batches.c.owner == owner, batches.c.state == "leased")
        with self.engine.begin() as conn:
            losses = conn.execute(batches.update().where(*mine).values(
                grader_losses=batches.c.grader_losses + 1, updated_at=self._clock())
                .returning(batches.c.grader_losses)).scalar()
            if losses is not None and losses < max_losses:
                conn.execute(batches.update().where(*mine).values(state="pending", owner=None,
                                                                  lease_expires_at=None))
        return None if losses is None else int(losses)

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
                    sa.or_(*(items.c.state == st for st in sources(ITEM_TRANSITIONS, "graded"))),
                ).values(state="graded", result=sa.bindparam("r"), confidence=sa.bindparam("c"),
                         error_share=sa.bindparam("e"), batch_id=outcome.batch_id, updated_at=now),
                    [{"s": r.student_id, "q": r.question_id, "r": r.model_dump_json(), "c": r.confidence,
                      "e": error_share(r.expected_error, r.max_score)}
                     for r in outcome.results])
                written = res.rowcount  # summed over the rows (supports_sane_multi_rowcount on both back ends)
                dropped = len(outcome.results) - written
            failed = self._fail_items(conn, job_id, outcome.errors, outcome.batch_id)
            # Items of this batch that the outcome neither graded nor reported (found by the
            # batch id each item got at planning; the payload is not read).
            failed += conn.execute(items.update().where(
                items.c.job_id == job_id, items.c.batch_id == outcome.batch_id,
                items.c.state.in_(sources(ITEM_TRANSITIONS, "failed"))).values(
                state="failed", error_type="missing_output", error_message="the grader returned no grade for this item",
                updated_at=now)).rowcount
            moved = conn.execute(batches.update().where(
                batches.c.id == outcome.batch_id, batches.c.state.in_(sources(BATCH_TRANSITIONS, "done")),
            ).values(state="done", replica=replica, owner=None, lease_expires_at=None,
                     duplicates_dropped=dropped, updated_at=now)).rowcount
            if moved and outcome.warnings:
                self._add_warnings(conn, job_id, outcome.warnings)
            if moved:  # usage is counted once per batch, even if it was graded twice
                conn.execute(jobs.update().where(jobs.c.id == job_id).values(
                    prompt_tokens=jobs.c.prompt_tokens + outcome.usage.prompt_tokens,
                    completion_tokens=jobs.c.completion_tokens + outcome.usage.completion_tokens, updated_at=now))
            self._count(conn, job_id, items_graded=written, items_failed=failed, batches_done=moved)
        return {"written": written, "dropped": dropped}
