"""What the job registry's mixins (:mod:`~raygrade.serve.registry_short_path`,
:mod:`~raygrade.serve.registry_webhooks`) need of :class:`raygrade.serve.job_registry.JobRegistryImpl`."""

from __future__ import annotations

from typing import Any

from raygrade.config import StoreConfig
from raygrade.store import JobStore


class RegistryPart:
    """The registry's store, its settings, and ``_do`` (a store call on the store's thread)."""

    _config: StoreConfig
    _store: JobStore

    async def _do(self, fn, *args, **kwargs) -> Any:
        """``fn(*args, **kwargs)`` on the store's thread: :meth:`JobRegistryImpl._do`."""
        raise NotImplementedError
