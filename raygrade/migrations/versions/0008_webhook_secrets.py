"""Tenants' webhook signing secrets: each tenant's deliveries signed with its own.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04

Until a tenant has one (``raygrade keys webhook-secret --tenant T``), its webhooks are not sent;
the application's secret (``store.webhook_secret_env``) signs the ``default`` tenant's only.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "raygrade_webhook_secrets" in sa.inspect(op.get_bind()).get_table_names():
        return  # made by a newer raygrade
    op.create_table(
        "raygrade_webhook_secrets",
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("raygrade_webhook_secrets")
