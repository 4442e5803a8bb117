"""The job store as first released: jobs with their bodies, items, batches, webhooks.

Revision ID: 0001
Revises:
Create Date: 2026-11-20

Stores made before the store used Alembic have exactly this schema (or this one plus
some of 0002's changes, which 0002 checks for) and are stamped with this revision.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "raygrade_jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("namespace", sa.String(128), nullable=False, server_default="raygrade"),
        sa.Column("idempotency_key", sa.String(256), nullable=True),
        sa.Column("body_hash", sa.String(64), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("model", sa.String(256)),
        sa.Column("students", sa.Integer, nullable=False),
        sa.Column("items_total", sa.Integer, nullable=False),
        sa.Column("batches_total", sa.Integer, nullable=False, server_default="0"),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("errors", sa.Text, nullable=False, server_default="[]"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.UniqueConstraint("namespace", "idempotency_key", name="raygrade_jobs_namespace_key"),
    )
    op.create_index("raygrade_jobs_namespace_state", "raygrade_jobs", ["namespace", "state"])
    op.create_table(
        "raygrade_items",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("student_id", sa.String(256), primary_key=True),
        sa.Column("question_id", sa.String(256), primary_key=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("batch_id", sa.String(96)),
        sa.Column("result", sa.Text),
        sa.Column("confidence", sa.Float),
        sa.Column("needs_review", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("error_type", sa.String(64)),
        sa.Column("error_message", sa.Text),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("raygrade_items_job_state", "raygrade_items", ["job_id", "state"])
    op.create_table(
        "raygrade_batches",
        sa.Column("id", sa.String(96), primary_key=True),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("owner", sa.String(96)),
        sa.Column("lease_expires_at", sa.Float),
        sa.Column("replica", sa.String(128)),
        sa.Column("duplicates_dropped", sa.Integer, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("raygrade_batches_job_state", "raygrade_batches", ["job_id", "state"])
    op.create_table(
        "raygrade_webhooks",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.Float, nullable=False),
        sa.Column("last_error", sa.String(512)),
        sa.Column("owner", sa.String(96)),
        sa.Column("lease_expires_at", sa.Float),
    )


def downgrade() -> None:
    for table in ("raygrade_webhooks", "raygrade_batches", "raygrade_items", "raygrade_jobs"):
        op.drop_table(table)
