"""A job's W3C trace context: the trace its submission joined, resumed by whichever batcher drives it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04

Jobs accepted before this revision, or while tracing is off, have none; a batcher that finds
one in the store starts a trace of its own for it (:mod:`raygrade.tracing`).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "trace_context" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("raygrade_jobs")}:
        return  # made by a newer raygrade
    with op.batch_alter_table("raygrade_jobs") as b:
        b.add_column(sa.Column("trace_context", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("raygrade_jobs") as b:
        b.drop_column("trace_context")
