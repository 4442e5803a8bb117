"""The webhook outbox: a row per job with a ``webhook_url`` and event, written in the transaction
of what it announces: ``grading.job.completed`` with the job's terminal state,
``grading.job.reviewed`` with the review that empties the job's review queue (once per job)."""

from __future__ import annotations

import base64
import secrets
from typing import Any

import sqlalchemy as sa

from raygrade.errors import NotFoundError
from raygrade.protocol import GradingJob
from raygrade.store.core import StoreCore
from raygrade.store.keys import check_tenant
from raygrade.store.schema import jobs, webhook_secrets, webhooks

#: The webhook events, as the body's ``type``.
COMPLETED, REVIEWED = "grading.job.completed", "grading.job.reviewed"


class WebhookOutbox(StoreCore):
    """Queueing, leasing and recording job-completion webhooks (delivered by
    :class:`raygrade.serve.webhook_sender.WebhookSender`)."""

    def _queue_webhook(self, conn, job_id: str, job: GradingJob, event: str = COMPLETED) -> None:
        if job.options.webhook_url:
            conn.execute(self._insert_ignore(webhooks).values(job_id=job_id, event=event, url=job.options.webhook_url,
                                                              state="pending", next_attempt_at=self._clock()))

    def lease_webhooks(self, owner: str, lease_s: float, limit: int = 16) -> list[tuple[str, str, str, int]]:
        """Due webhooks, leased to ``owner``: ``[(job_id, event, url, attempt number)]``."""
        now = self._clock()
        out = []
        with self.engine.begin() as conn:
            due = conn.execute(sa.select(webhooks.c.job_id, webhooks.c.event, webhooks.c.url, webhooks.c.attempts)
                               .where(webhooks.c.state == "pending", webhooks.c.next_attempt_at <= now,
                                      sa.or_(webhooks.c.lease_expires_at.is_(None), webhooks.c.lease_expires_at < now))
                               .limit(limit)).all()
            for w in due:
                if conn.execute(webhooks.update().where(
                        webhooks.c.job_id == w.job_id, webhooks.c.event == w.event, webhooks.c.state == "pending",
                        sa.or_(webhooks.c.lease_expires_at.is_(None), webhooks.c.lease_expires_at < now))
                        .values(owner=owner, lease_expires_at=now + lease_s)).rowcount:
                    out.append((w.job_id, w.event, w.url, w.attempts + 1))
        return out

    def webhook_result(self, job_id: str, *, event: str = COMPLETED, ok: bool, error: str | None = None,
                       retry_in_s: float | None = None, max_attempts: int = 8) -> str:
        """Record a delivery attempt; returns the webhook's new state (``delivered``, ``pending``, ``failed``)."""
        now = self._clock()
        key = (webhooks.c.job_id == job_id, webhooks.c.event == event)
        with self.engine.begin() as conn:
            w = conn.execute(sa.select(webhooks.c.attempts).where(*key)).first()
            if w is None:
                raise NotFoundError(f"no {event} webhook for job {job_id!r}", param="job_id")
            attempts = w.attempts + 1
            state = "delivered" if ok else ("failed" if attempts >= max_attempts else "pending")
            conn.execute(webhooks.update().where(*key).values(
                state=state, attempts=attempts, last_error=(error or "")[:500] or None, owner=None,
                lease_expires_at=None, next_attempt_at=now + (retry_in_s or 0.0)))
            return state

    def set_webhook_secret(self, tenant: str) -> str:
        """A new signing secret for ``tenant``'s webhooks (``whsec_`` + base64 of 32 random bytes,
        Standard Webhooks' form), replacing the one it had; returned once, to hand to the tenant.

        Raises:
            InvalidRequestError: ``tenant`` is not a tenant name.
        """
        check_tenant(tenant)
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        with self.engine.begin() as conn:
            conn.execute(webhook_secrets.delete().where(webhook_secrets.c.tenant == tenant))
            conn.execute(webhook_secrets.insert().values(tenant=tenant, secret=secret, created_at=self._clock()))
        return secret

    def signing_secret(self, job_id: str) -> tuple[str, str | None]:
        """``(the job's tenant, that tenant's webhook secret or None)``.

        Raises:
            NotFoundError: no such job.
        """
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(jobs.c.tenant, webhook_secrets.c.secret).select_from(
                jobs.outerjoin(webhook_secrets, webhook_secrets.c.tenant == jobs.c.tenant)).where(
                jobs.c.id == job_id)).first()
        if row is None:
            raise NotFoundError(f"no job {job_id!r}", param="job_id")
        return row.tenant, row.secret

    def webhook(self, job_id: str, event: str = COMPLETED) -> dict[str, Any] | None:
        """A job's webhook row for ``event`` (state, attempts, last_error), or ``None``."""
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(webhooks).where(webhooks.c.job_id == job_id, webhooks.c.event == event)
                             ).mappings().first()
            return dict(r) if r else None
