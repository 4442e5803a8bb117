"""Job warnings: problems with whole questions, named in the job's status.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

Jobs accepted before this revision have none.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "warnings" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("raygrade_jobs")}:
        return  # made by a newer raygrade
    with op.batch_alter_table("raygrade_jobs") as b:
        b.add_column(sa.Column("warnings", sa.Text, nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("raygrade_jobs") as b:
        b.drop_column("warnings")
