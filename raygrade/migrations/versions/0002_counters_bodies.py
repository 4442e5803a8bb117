"""Job progress counters in the job row, job bodies in their own table, two batch/item indexes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

status(), lease and completion then read and update one small job row whatever the job's
size. The counters are backfilled from each job's items and batches. Each step checks
what is there, because stores upgraded by the hand-written migration of raygrade 0.1
(before Alembic) may have some of these changes already.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

COUNTERS = ("items_graded", "items_failed", "items_cancelled", "items_needs_review", "batches_done",
            "batches_redispatched")


def upgrade() -> None:
    bind = op.get_bind()
    insp = sa.inspect(bind)
    have = {c["name"] for c in insp.get_columns("raygrade_jobs")}
    missing = [c for c in COUNTERS if c not in have]
    if "raygrade_job_bodies" not in insp.get_table_names():
        op.create_table(
            "raygrade_job_bodies",
            sa.Column("job_id", sa.String(64), primary_key=True),
            sa.Column("body", sa.Text, nullable=False),
        )
    jobs = sa.table("raygrade_jobs", sa.column("id"), sa.column("body"), *(sa.column(c) for c in COUNTERS))
    items = sa.table("raygrade_items", sa.column("job_id"), sa.column("state"), sa.column("needs_review"))
    batches = sa.table("raygrade_batches", sa.column("job_id"), sa.column("state"), sa.column("attempts"))
    bodies = sa.table("raygrade_job_bodies", sa.column("job_id"), sa.column("body"))
    if "body" in have:
        op.execute(bodies.insert().from_select(["job_id", "body"], sa.select(jobs.c.id, jobs.c.body).where(
            jobs.c.id.not_in(sa.select(bodies.c.job_id)))))
    with op.batch_alter_table("raygrade_jobs") as batch:
        for name in missing:
            batch.add_column(sa.Column(name, sa.Integer, nullable=False, server_default="0"))
        if "body" in have:
            batch.drop_column("body")
    if missing:
        def item_count(*cond):
            return sa.select(sa.func.count()).where(items.c.job_id == jobs.c.id, *cond).scalar_subquery()

        op.execute(jobs.update().values(
            items_graded=item_count(items.c.state == "graded"),
            items_failed=item_count(items.c.state == "failed"),
            items_cancelled=item_count(items.c.state == "cancelled"),
            items_needs_review=item_count(items.c.needs_review.is_(True)),
            batches_done=sa.select(sa.func.count()).where(batches.c.job_id == jobs.c.id,
                                                           batches.c.state == "done").scalar_subquery(),
            batches_redispatched=sa.select(sa.func.coalesce(sa.func.sum(batches.c.attempts - 1), 0)).where(
                batches.c.job_id == jobs.c.id, batches.c.attempts > 1).scalar_subquery()))
    indexes = {i["name"] for t in ("raygrade_items", "raygrade_batches") for i in insp.get_indexes(t)}
    if "raygrade_items_job_batch" not in indexes:
        op.create_index("raygrade_items_job_batch", "raygrade_items", ["job_id", "batch_id", "state"])
    if "raygrade_batches_job_state_seq" not in indexes:
        op.create_index("raygrade_batches_job_state_seq", "raygrade_batches", ["job_id", "state", "seq"])


def downgrade() -> None:
    op.drop_index("raygrade_batches_job_state_seq", "raygrade_batches")
    op.drop_index("raygrade_items_job_batch", "raygrade_items")
    with op.batch_alter_table("raygrade_jobs") as batch:
        batch.add_column(sa.Column("body", sa.Text, nullable=False, server_default=""))
    jobs = sa.table("raygrade_jobs", sa.column("id"), sa.column("body"))
    bodies = sa.table("raygrade_job_bodies", sa.column("job_id"), sa.column("body"))
    op.execute(jobs.update().values(body=sa.select(bodies.c.body).where(bodies.c.job_id == jobs.c.id)
                                    .scalar_subquery()))
    with op.batch_alter_table("raygrade_jobs") as batch:
        for name in COUNTERS:
            batch.drop_column(name)
    op.drop_table("raygrade_job_bodies")
