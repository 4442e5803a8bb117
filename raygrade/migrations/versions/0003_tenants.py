"""Tenants: API keys (hashed), a tenant per job, idempotency keys unique per tenant.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Jobs accepted before this revision belong to tenant ``default`` (the tenant of every caller
while authentication is disabled).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    insp = sa.inspect(op.get_bind())
    if "raygrade_api_keys" in insp.get_table_names():  # a store stamped from before Alembic, made by a newer raygrade
        return
    op.create_table(
        "raygrade_api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("name", sa.String(256)),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float),
    )
    op.create_index("raygrade_api_keys_tenant", "raygrade_api_keys", ["tenant"])
    # SQLite cannot alter a constraint in place: batch mode copies the table (PostgreSQL alters it).
    with op.batch_alter_table("raygrade_jobs") as b:
        b.add_column(sa.Column("tenant", sa.String(128), nullable=False, server_default="default"))
        b.drop_constraint("raygrade_jobs_namespace_key", type_="unique")
        b.create_unique_constraint("raygrade_jobs_tenant_key", ["namespace", "tenant", "idempotency_key"])
    op.create_index("raygrade_jobs_tenant_created", "raygrade_jobs", ["namespace", "tenant", "created_at"])


def downgrade() -> None:
    op.drop_index("raygrade_jobs_tenant_created", "raygrade_jobs")
    with op.batch_alter_table("raygrade_jobs") as b:
        b.drop_constraint("raygrade_jobs_tenant_key", type_="unique")
        b.create_unique_constraint("raygrade_jobs_namespace_key", ["namespace", "idempotency_key"])
        b.drop_column("tenant")
    op.drop_table("raygrade_api_keys")
