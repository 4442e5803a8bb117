"""``JobRegistry``: the Serve deployment in front of the durable job store.

Every read and write of job state goes through here to :class:`raygrade.store.JobStore`
(SQLite on the head node by default, PostgreSQL for clusters), so a restart of any
deployment, of the Serve application or of the whole Ray cluster loses nothing that
was accepted. Store calls run in a worker thread (one for SQLite, whose writers
serialise anyway; four for PostgreSQL).
"""

from __future__ import annotations

import asyncio
import functools
import os
from concurrent.futures import ThreadPoolExecutor

from ray import serve

from raygrade.config import StoreConfig
from raygrade.errors import InvalidRequestError
from raygrade.protocol import GradingJob, JobStatus
from raygrade.store import JobStore

#: JobStore methods the deployment exposes as they are.
STORE_METHODS = ("get_job", "status", "results", "replicas", "cancel", "record_plan",
                 "lease_batches", "renew_leases", "release_batch", "batch_attempts", "complete_batch",
                 "finish_if_complete", "fail_job", "lease_webhooks", "webhook_result", "webhook", "batch_report",
                 "failure_counts")


class JobRegistryImpl:
    """The store behind async methods (plain class; :data:`JobRegistry` deploys it).

    Args:
        config: The store's URL and settings.
        namespace: The application's namespace: its jobs in a shared database.
    """

    def __init__(self, config: StoreConfig, namespace: str = "raygrade"):
        self._config, self._namespace = config, namespace
        self._store = JobStore(config.resolved_url(), blob_uri=config.resolved_blob_uri())
        self._pool = ThreadPoolExecutor(1 if self._store.dialect == "sqlite" else 4,
                                        thread_name_prefix="raygrade-store")

    async def _do(self, fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def create(self, job: GradingJob, idempotency_key: str | None = None) -> tuple[JobStatus, bool]:
        """Durably record a job (see :meth:`JobStore.create_job`).

        Raises:
            InvalidRequestError: a ``webhook_url`` while no signing secret is configured.
            ConflictError: the idempotency key was used with a different body.
        """
        if job.options.webhook_url and not os.environ.get(self._config.webhook_secret_env):
            raise InvalidRequestError(f"webhooks are not enabled on this server (set {self._config.webhook_secret_env})",
                                      param="options.webhook_url")
        return await self._do(self._store.create_job, job, idempotency_key, self._namespace)

    async def gauges(self) -> dict:
        """This application's jobs by state and pending batches (see :meth:`JobStore.gauges`)."""
        return await self._do(self._store.gauges, self._namespace)

    async def unfinished_jobs(self) -> list[str]:
        """This application's unfinished jobs (see :meth:`JobStore.unfinished_jobs`)."""
        return await self._do(self._store.unfinished_jobs, self._namespace)


def _passthrough(name: str):
    async def method(self, *args, **kwargs):
        return await self._do(getattr(self._store, name), *args, **kwargs)

    method.__name__ = name
    method.__doc__ = getattr(JobStore, name).__doc__
    return method


for _name in STORE_METHODS:
    setattr(JobRegistryImpl, _name, _passthrough(_name))

JobRegistry = serve.deployment(name="JobRegistry", num_replicas=1, ray_actor_options={"num_cpus": 0},
                               max_ongoing_requests=1000)(JobRegistryImpl)
