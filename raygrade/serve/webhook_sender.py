"""Delivering webhooks from the store's outbox (``grading.job.completed``, ``grading.job.reviewed``).

The store writes a webhook row in the same transaction as a job's terminal state
(:mod:`raygrade.store`); :class:`WebhookSender` leases the rows that are due, POSTs them
signed (:mod:`raygrade.webhooks`) and records each result, which schedules a retry with
backoff or gives up after ``webhook_max_attempts``. Deliveries run concurrently, in a task
apart from the Batcher's control loop, so one slow receiver delays nobody else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os

from raygrade.config import StoreConfig
from raygrade.config.api import DEFAULT_TENANT
from raygrade.metrics import Recorder
from raygrade.retry import backoff_delay
from raygrade.serve.logs import ids
from raygrade.store.outbox import COMPLETED
from raygrade.tracing import new_trace, span
from raygrade.webhooks import deliver

logger = logging.getLogger(f"ray.serve.{__name__}")

#: Deliveries in flight at once per sender.
MAX_CONCURRENT_DELIVERIES = 16


class WebhookSender:
    """Sends the due webhooks of one application.

    Args:
        registry: ``JobRegistry`` handle (``lease_webhooks``, ``status``, ``webhook_result``).
        config: The store settings (timeouts, attempts, the secret's variable).
        owner: Lease owner id (the Batcher replica's).
        metrics: Where ``raygrade_webhook_deliveries`` is counted.
        tags: Metric tags (the application's namespace).
    """

    def __init__(self, registry, config: StoreConfig, owner: str, metrics: Recorder, tags: dict[str, str]):
        self._registry, self._cfg, self._owner, self._metrics, self._tags = registry, config, owner, metrics, tags
        self._sem = asyncio.Semaphore(MAX_CONCURRENT_DELIVERIES)

    async def run(self, interval_s: float) -> None:
        """Deliver what is due every ``interval_s`` seconds, forever."""
        while True:
            try:
                await self.deliver_due()
            except Exception as exc:  # the store is briefly unreachable: try again
                logger.warning("webhook sender: %s", type(exc).__name__)
            await asyncio.sleep(interval_s)

    async def deliver_due(self) -> int:
        """Lease the due webhooks and deliver them concurrently; returns how many were tried."""
        cfg = self._cfg
        # The lease outlives a delivery's timeout, so no other sender takes a row mid-delivery.
        due = await self._registry.lease_webhooks.remote(self._owner, cfg.webhook_timeout_s * 3)
        await asyncio.gather(*(self._one(job_id, event, url, attempt) for job_id, event, url, attempt in due))
        return len(due)

    async def _one(self, job_id: str, event: str, url: str, attempt: int) -> None:
        with span("raygrade.webhook", {"raygrade.job_id": job_id, "raygrade.webhook.event": event,
                                       "raygrade.webhook.attempt": attempt}, parent=new_trace()) as s:
            s.set_attribute("raygrade.webhook.state", await self._deliver(job_id, event, url, attempt))

    async def _deliver(self, job_id: str, event: str, url: str, attempt: int) -> str:
        """One delivery attempt, recorded in the outbox; returns the row's new state."""
        cfg = self._cfg
        async with self._sem:
            tenant, secret = await self._registry.signing_secret.remote(job_id)
            if secret is None and tenant == DEFAULT_TENANT:  # one tenant (no API keys): the app's secret
                secret = os.environ.get(cfg.webhook_secret_env)
            status = await self._registry.status.remote(job_id)
            body = json.dumps({"type": event, "data": status.model_dump(mode="json")}).encode()
            # The message id is the same on every attempt (receivers deduplicate on it), one per event.
            msg_id = f"msg_{job_id}" if event == COMPLETED else f"msg_{job_id}_{event.rsplit('.', 1)[-1]}"
            try:
                error = (f"no signing secret for tenant {tenant!r} (raygrade keys webhook-secret --tenant "
                         f"{tenant})" if not secret else
                         await deliver(url, secret, msg_id, body, timeout_s=cfg.webhook_timeout_s,
                                       allowed_networks=cfg.webhook_allowed_networks))
            except Exception as exc:  # any failure is a recorded attempt, never a retry without end
                error = f"delivery failed: {type(exc).__name__}"
        state = await self._registry.webhook_result.remote(
            job_id, event=event, ok=error is None, error=error,
            retry_in_s=backoff_delay(attempt, base_s=1.0, cap_s=300.0), max_attempts=cfg.webhook_max_attempts)
        logger.info("webhook %s for job %s: attempt %d, %s", event, job_id, attempt, state, extra=ids(job_id))
        self._metrics.inc("raygrade_webhook_deliveries", 1,
                          {**self._tags, "outcome": "delivered" if error is None else "failed"})
        return state
