"""Teachers' reviews: the audit trail, the review that stands on each item, a job counter, the
link from a regrade job to the job whose question it regrades, a review target's plan, and webhook
events (a job's row per event: completed, reviewed).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

Items graded before this revision have no review; jobs count none.
"""
from __future__ import annotations

import contextlib
import warnings

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

@contextlib.contextmanager
def _new_key():
    """SQLAlchemy warns that the copied table's reflected key column differs from the new primary
    key, then uses the new key, which is what is wanted here: that warning alone is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not matching locally specified columns",
                                category=sa.exc.SAWarning)
        yield


_ITEM_COLUMNS = ("review_score", "review_comment", "reviewed_by", "reviewed_at", "review_revisions")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if "raygrade_reviews" in inspector.get_table_names():  # made by a newer raygrade
        return
    op.create_table(
        "raygrade_reviews",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("student_id", sa.String(256), nullable=False),
        sa.Column("question_id", sa.String(256), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("model_score", sa.Float, nullable=False),
        sa.Column("comment", sa.Text),
        sa.Column("key_id", sa.String(32)),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("raygrade_reviews_item", "raygrade_reviews", ["job_id", "student_id", "question_id"])
    with op.batch_alter_table("raygrade_items") as b:
        b.add_column(sa.Column("review_score", sa.Float))
        b.add_column(sa.Column("review_comment", sa.Text))
        b.add_column(sa.Column("reviewed_by", sa.String(32)))
        b.add_column(sa.Column("reviewed_at", sa.Float))
        b.add_column(sa.Column("review_revisions", sa.Integer, nullable=False, server_default="0"))
    postgres = op.get_bind().dialect.name == "postgresql"
    with _new_key(), op.batch_alter_table("raygrade_webhooks") as b:  # SQLite copies the table with the new key
        b.add_column(sa.Column("event", sa.String(32), nullable=False, server_default="grading.job.completed"))
        if postgres:
            b.drop_constraint("raygrade_webhooks_pkey", type_="primary")
        b.create_primary_key("raygrade_webhooks_pkey", ["job_id", "event"])
    op.create_index("raygrade_items_job_seq", "raygrade_items", ["job_id", "seq"])
    with op.batch_alter_table("raygrade_jobs") as b:
        b.add_column(sa.Column("items_reviewed", sa.Integer, nullable=False, server_default="0"))
        b.add_column(sa.Column("regrade_of", sa.String(64)))
        b.add_column(sa.Column("review_plan", sa.Text))


def downgrade() -> None:
    op.execute("DELETE FROM raygrade_webhooks WHERE event <> 'grading.job.completed'")
    postgres = op.get_bind().dialect.name == "postgresql"
    with _new_key(), op.batch_alter_table("raygrade_webhooks") as b:
        if postgres:
            b.drop_constraint("raygrade_webhooks_pkey", type_="primary")
        b.drop_column("event")
        b.create_primary_key("raygrade_webhooks_pkey", ["job_id"])
    with op.batch_alter_table("raygrade_jobs") as b:
        b.drop_column("review_plan")
        b.drop_column("regrade_of")
        b.drop_column("items_reviewed")
    op.drop_index("raygrade_items_job_seq", "raygrade_items")
    with op.batch_alter_table("raygrade_items") as b:
        for c in _ITEM_COLUMNS:
            b.drop_column(c)
    op.drop_index("raygrade_reviews_item", "raygrade_reviews")
    op.drop_table("raygrade_reviews")
