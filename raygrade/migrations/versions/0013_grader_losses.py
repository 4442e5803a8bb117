"""A batch's lost grader calls, counted apart from its leases.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06

``grader_losses``: the grader calls of the batch that ended without an answer (the replica
died). ``max_batch_attempts`` bounds these; ``attempts`` still counts every lease, leases
taken over from a batcher that died included, which are not the batch's fault.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "grader_losses" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("raygrade_batches")}:
        return  # made by a newer raygrade
    with op.batch_alter_table("raygrade_batches") as b:
        b.add_column(sa.Column("grader_losses", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("raygrade_batches") as b:
        b.drop_column("grader_losses")
