"""A tenant's quota on the bytes of its stored files (the Files API).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04

``file_bytes``: the bytes of uploaded files a tenant may keep (``NULL``: no limit); an upload
past it is refused until the tenant deletes files.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "file_bytes" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("raygrade_tenant_quotas")}:
        return  # made by a newer raygrade
    with op.batch_alter_table("raygrade_tenant_quotas") as b:
        b.add_column(sa.Column("file_bytes", sa.BigInteger))


def downgrade() -> None:
    with op.batch_alter_table("raygrade_tenant_quotas") as b:
        b.drop_column("file_bytes")
