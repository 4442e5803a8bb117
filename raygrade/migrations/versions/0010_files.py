"""Files uploaded for their pages (the Files API: ``POST /v1/files``).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04

A file's bytes and its page images are in the blob store (by SHA-256); the row holds its
tenant, name, size and the page images' references.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "raygrade_files" in sa.inspect(op.get_bind()).get_table_names():
        return  # made by a newer raygrade
    op.create_table(
        "raygrade_files",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("filename", sa.String(512), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("media_type", sa.String(128), nullable=False),
        sa.Column("page_count", sa.Integer, nullable=False),
        sa.Column("pages", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("raygrade_files_tenant_created", "raygrade_files", ["tenant", "created_at"])


def downgrade() -> None:
    op.drop_index("raygrade_files_tenant_created", "raygrade_files")
    op.drop_table("raygrade_files")
