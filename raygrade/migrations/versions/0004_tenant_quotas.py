"""Tenants' quotas: active jobs, items and tokens per rolling day.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

A tenant without a row has no quota (as before this revision).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "raygrade_tenant_quotas" in sa.inspect(op.get_bind()).get_table_names():  # made by a newer raygrade
        return
    op.create_table(
        "raygrade_tenant_quotas",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("max_active_jobs", sa.Integer),
        sa.Column("items_per_day", sa.BigInteger),
        sa.Column("tokens_per_day", sa.BigInteger),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("raygrade_jobs_tenant_usage", "raygrade_jobs", ["tenant", "created_at"])
    op.create_index("raygrade_jobs_tenant_state", "raygrade_jobs", ["tenant", "state"])


def downgrade() -> None:
    op.drop_index("raygrade_jobs_tenant_state", "raygrade_jobs")
    op.drop_index("raygrade_jobs_tenant_usage", "raygrade_jobs")
    op.drop_table("raygrade_tenant_quotas")
