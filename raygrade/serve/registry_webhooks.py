"""The job registry's webhook calls (a mixin of :class:`raygrade.serve.job_registry.JobRegistryImpl`):
the check of a job's ``webhook_url`` when it is recorded, and the outbox the batcher's
:class:`~raygrade.serve.webhook_sender.WebhookSender` delivers from."""

from __future__ import annotations

import os
from typing import Any

from raygrade.errors import InvalidRequestError
from raygrade.protocol import GradingJob
from raygrade.serve.registry_part import RegistryPart
from raygrade.store.outbox import COMPLETED
from raygrade.webhooks import check_url, resolve_checked


class WebhookOutbox(RegistryPart):
    """Webhook calls over ``self._store`` on the registry's store thread (``self._do``)."""

    async def _check_webhook(self, job: GradingJob) -> None:
        """Refuse a ``webhook_url`` while no signing secret is configured, or one whose host
        webhooks may not reach. Raises ``InvalidRequestError``."""
        if job.options.webhook_url:
            if not os.environ.get(self._config.webhook_secret_env):
                raise InvalidRequestError(
                    f"webhooks are not enabled on this server (set {self._config.webhook_secret_env})",
                    param="options.webhook_url")
            try:
                await resolve_checked(check_url(job.options.webhook_url), self._config.webhook_allowed_networks)
            except ValueError as exc:
                raise InvalidRequestError(str(exc), param="options.webhook_url") from None

    async def lease_webhooks(self, owner: str, lease_s: float, limit: int = 16) -> list[tuple[str, str, str, int]]:
        """Due webhooks leased to ``owner`` (:meth:`JobStore.lease_webhooks`)."""
        return await self._do(self._store.lease_webhooks, owner, lease_s, limit)

    async def signing_secret(self, job_id: str) -> tuple[str, str | None]:
        """The job's tenant and its webhook secret (:meth:`JobStore.signing_secret`)."""
        return await self._do(self._store.signing_secret, job_id)

    async def webhook_result(self, job_id: str, *, event: str = COMPLETED, ok: bool, error: str | None = None,
                             retry_in_s: float | None = None, max_attempts: int = 8) -> str:
        """Record a delivery attempt (:meth:`JobStore.webhook_result`); returns the new state."""
        return await self._do(self._store.webhook_result, job_id, event=event, ok=ok, error=error,
                              retry_in_s=retry_in_s, max_attempts=max_attempts)

    async def webhook(self, job_id: str, event: str = COMPLETED) -> dict[str, Any] | None:
        """The job's webhook row for ``event`` (:meth:`JobStore.webhook`)."""
        return await self._do(self._store.webhook, job_id, event)

