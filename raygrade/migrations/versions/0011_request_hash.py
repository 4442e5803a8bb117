"""A job's request as sent, hashed: an idempotent replay is answered without resolving its pages.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04

``body_hash`` is the hash of the job as stored (uploaded files' pages resolved to their page
images, inline images moved to the blob store); ``request_hash`` that of the job as its caller
sent it (``None`` for jobs accepted before this revision, or without an idempotency key). A
replay of the same request is answered from it, before any page is decoded or resolved, so it
is the same job even after a file it names was deleted.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "request_hash" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("raygrade_jobs")}:
        return  # made by a newer raygrade
    with op.batch_alter_table("raygrade_jobs") as b:
        b.add_column(sa.Column("request_hash", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("raygrade_jobs") as b:
        b.drop_column("request_hash")
