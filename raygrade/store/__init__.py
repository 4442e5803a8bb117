"""The durable job store: jobs, their items, batches and webhooks in SQL.

One :class:`JobStore` over SQLAlchemy Core serves both back ends: SQLite (a file on
the head node, the embedded default) and PostgreSQL (clusters). Everything the
service has accepted is in the store before anyone acts on it, and every write is
idempotent, so any process may die at any point and the work resumes from here.

Parts: :mod:`~raygrade.store.schema` (tables, engine, Alembic migrations),
:mod:`~raygrade.store.states` (the state machines), :mod:`~raygrade.store.core` (shared
helpers), :mod:`~raygrade.store.jobs` (:class:`JobStore`), :mod:`~raygrade.store.batches`
(plans, leases, completion), :mod:`~raygrade.store.outbox` (webhooks),
:mod:`~raygrade.store.keys` (tenants' API keys), :mod:`~raygrade.store.quotas` (tenants' quotas),
:mod:`~raygrade.store.reviews` (teachers' reviews and their audit trail).

State machines (:mod:`raygrade.store.states`; a transition not listed raises
:class:`IllegalTransitionError`)::

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

from raygrade.errors import IllegalTransitionError
from raygrade.store.jobs import JobStore
from raygrade.store.schema import (
    COUNTER_COLUMNS,
    VERSION_TABLE,
    create_engine,
    metadata,
    migrate,
)
from raygrade.store.states import (
    BATCH_TRANSITIONS,
    ITEM_TRANSITIONS,
    JOB_TRANSITIONS,
    BatchState,
    ItemState,
    check_transition,
)

__all__ = ["BATCH_TRANSITIONS", "COUNTER_COLUMNS", "ITEM_TRANSITIONS", "JOB_TRANSITIONS", "VERSION_TABLE",
           "BatchState", "IllegalTransitionError", "ItemState", "JobStore", "check_transition", "create_engine",
           "metadata", "migrate"]
