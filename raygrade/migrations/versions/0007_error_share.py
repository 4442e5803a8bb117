"""Items' expected error as a share of the maximum: what review routing ranks by.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04

Items graded before this revision have none; routing falls back to their confidence.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "error_share" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("raygrade_items")}:
        return  # made by a newer raygrade
    with op.batch_alter_table("raygrade_items") as b:
        b.add_column(sa.Column("error_share", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("raygrade_items") as b:
        b.drop_column("error_share")
