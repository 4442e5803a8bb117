"""``DirectStore``: the ingress's own access to the job store, without the registry where it can.

A client polling ``GET /v1/jobs/{id}`` cost a handle call to the ``JobRegistry`` per poll
(≈ 10.6 ms of CPU per GET across the proxy, ingress and registry on 2 cores, 2.3 ms of it the
registry's) and a turn on the registry's one SQLite thread, behind every write. Reads need
neither: SQLite in WAL mode lets another process read while the registry writes, and every
registry replica reads PostgreSQL the same way. So the ingress reads a job's status, a tenant's
jobs, a job's results, an idempotent replay and a quota's pre-check itself, on threads of its
own, wherever it can open the store:

- PostgreSQL: always;
- SQLite: only on the node the file is on (the head node, where the registry is pinned), and
  only once the file exists.

On PostgreSQL, where every process may write, the ingress also records new jobs itself
(:meth:`DirectStore.create_jobs`, used by :class:`raygrade.serve.accept.JobAcceptor`): the
same :meth:`JobStore.create_job` transaction a registry replica runs, with no round trip through
one. SQLite keeps one writer, the registry.

The store is opened without migrating it (the registry creates and upgrades the schema); a
store not yet created or not yet upgraded, an ingress on another node, or a read that fails
for a reason of the store's (not a :class:`~raygrade.errors.RaygradeError` such as a 404) goes
through the registry as before, and opening is tried again after :data:`REOPEN_S`. A write is
never retried through the registry: a job whose transaction failed in an unknown state is
the caller's to retry, with its idempotency key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url

from raygrade.config import StoreConfig
from raygrade.errors import RaygradeError
from raygrade.protocol import JobResults, JobState, JobStatus
from raygrade.serve.http_app import _call
from raygrade.serve.registry_part import create_jobs
from raygrade.store import JobStore
from raygrade.tracing import span

if TYPE_CHECKING:
    from opentelemetry import context as otel_context

    from raygrade.serve.accept import NewJob

logger = logging.getLogger(f"ray.serve.{__name__}")

#: Seconds before a store that could not be opened for reading is tried again.
REOPEN_S = 30.0
#: Threads the ingress reads (and on PostgreSQL writes) the store on.
READ_THREADS = 4


def on_head_node() -> bool:
    """Whether this process runs on the Ray cluster's head node (``False`` outside Ray)."""
    import ray

    if not ray.is_initialized():
        return False
    here = ray.get_runtime_context().get_node_id()
    return any(n["NodeID"] == here and "node:__internal_head__" in n.get("Resources", {}) for n in ray.nodes())


class DirectStore:
    """A job's status, a tenant's jobs, a job's results, an idempotent replay and a quota's
    pre-check: read from the store by this process where it can (see the module's docstring),
    else through the registry; new jobs recorded by this process on PostgreSQL.

    Args:
        registry: ``JobRegistry`` handle (``status``, ``list_jobs``, ``results``, ``replay``,
            ``check_quota`` as its methods).
        store: The store's settings; ``None``: always the registry.
        namespace: The application's namespace (its jobs in a shared database).
        on_store_node: Whether this process runs where a SQLite file is (default:
            :func:`on_head_node`); unit tests inject it.
        clock: Monotonic seconds (when opening is tried again).

    Every read raises what the registry's raises: ``NotFoundError`` for a job that is not
    the tenant's, ``StorageError`` when neither way reaches the store.
    """

    def __init__(self, registry, store: StoreConfig | None, namespace: str, *,
                 on_store_node: Callable[[], bool] = on_head_node, clock: Callable[[], float] = time.monotonic):
        self._registry, self._config, self._namespace = registry, store, namespace
        self._on_store_node, self._clock = on_store_node, clock
        self._store: JobStore | None = None
        self._retry_at = float("-inf") if store is not None else float("inf")
        self._opening: asyncio.Future | None = None
        self._pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="raygrade-reads")

    @property
    def direct(self) -> bool:
        """Whether reads go to the store itself now."""
        return self._store is not None

    def _open(self) -> JobStore | None:
        """The store opened for reading, or ``None`` where this process cannot read it."""
        assert self._config is not None
        url = self._config.resolved_url()
        if url.startswith("sqlite"):
            path = make_url(url).database
            if not path or path == ":memory:" or not self._on_store_node() or not Path(path).expanduser().is_file():
                return None
        return JobStore(url, blob_uri=self._config.resolved_blob_uri(), migrate_schema=False)

    async def _reader(self) -> JobStore | None:
        if self._store is not None or self._clock() < self._retry_at:
            return self._store
        if self._opening is None:  # one attempt at a time; concurrent reads wait for it
            self._opening = asyncio.get_running_loop().run_in_executor(self._pool, self._open)
        opening = self._opening
        try:
            self._store = await opening
        except Exception as exc:  # not created or upgraded yet, or unreachable from here
            logger.info("ingress: reading the job store through the registry for %.0f s (%s)", REOPEN_S,
                        exc.message if isinstance(exc, RaygradeError) else type(exc).__name__)
        finally:
            if self._opening is opening:
                self._opening = None
        if self._store is None:
            self._retry_at = self._clock() + REOPEN_S
        return self._store

    async def _read(self, name: str, direct: Callable[[JobStore], Any], via_registry: Callable[[], Any],
                    parent: otel_context.Context | None) -> Any:
        """``direct(store)`` on a read thread, else ``await via_registry()`` (a handle call), in a
        ``raygrade.ingress_read <name>`` span under ``parent`` (a caller's ``traceparent``)."""
        with span(f"raygrade.ingress_read {name}", parent=parent) as s:
            store = await self._reader()
            s.set_attribute("raygrade.read.direct", store is not None)
            if store is not None:
                try:
                    return await asyncio.get_running_loop().run_in_executor(self._pool, direct, store)
                except RaygradeError:
                    raise
                except Exception as exc:  # the store's own failure: the registry may still answer
                    logger.warning("ingress: a direct %s read failed (%s); asking the registry", name,
                                   type(exc).__name__)
                    s.set_attribute("raygrade.read.direct", False)
            return await _call(via_registry())

    async def status(self, job_id: str, tenant: str, *, parent: otel_context.Context | None = None) -> JobStatus:
        """The job's state and progress (:meth:`JobStore.status`)."""
        return await self._read("status", lambda s: s.status(job_id, tenant),
                                lambda: self._registry.status.remote(job_id, tenant), parent)

    async def list_jobs(self, tenant: str, state: JobState | None, limit: int, after: str | None, *,
                        parent: otel_context.Context | None = None) -> tuple[list[JobStatus], bool]:
        """The tenant's jobs in this namespace, newest first (:meth:`JobStore.list_jobs`)."""
        return await self._read(
            "list_jobs", lambda s: s.list_jobs(self._namespace, tenant, state=state, limit=limit, after=after),
            lambda: self._registry.list_jobs.remote(tenant, state, limit, after), parent)

    async def results(self, job_id: str, tenant: str, *, parent: otel_context.Context | None = None) -> JobResults:
        """Grades and errors so far (:meth:`JobStore.results`)."""
        return await self._read("results", lambda s: s.results(job_id, tenant),
                                lambda: self._registry.results.remote(job_id, tenant), parent)

    async def replay(self, idempotency_key: str, request_hash: str, tenant: str, *,
                     parent: otel_context.Context | None = None) -> JobStatus | None:
        """The job an idempotent replay of the same request names, or ``None``
        (:meth:`JobStore.replay_request`)."""
        return await self._read(
            "replay", lambda s: s.replay_request(idempotency_key, request_hash, self._namespace, tenant),
            lambda: self._registry.replay.remote(idempotency_key, request_hash, tenant), parent)

    async def check_quota(self, tenant: str, items: int, idempotency_key: str | None, *,
                          parent: otel_context.Context | None = None) -> None:
        """Raise ``QuotaExceededError`` if the tenant's quota would refuse a job of ``items``
        items now (:meth:`JobStore.check_quota`: a read, before a job's pages are decoded)."""
        await self._read(
            "check_quota", lambda s: s.check_quota(tenant, items, self._namespace, idempotency_key),
            lambda: self._registry.check_quota.remote(tenant, items, idempotency_key), parent)

    async def create_jobs(self, news: list[NewJob]) -> list[tuple[JobStatus, bool] | RaygradeError] | None:
        """Record each of ``news`` in the store from this process, each in a transaction of its own,
        in order (:func:`~raygrade.serve.registry_part.create_jobs`, as the registry's
        ``create_many`` does), where every process may write: PostgreSQL. ``None`` (nothing
        recorded) on SQLite, whose one writer is the registry, or while the store cannot be
        opened here.

        Returns:
            One entry per job: ``(status, created)``, or the :class:`RaygradeError` that
            :meth:`JobStore.create_job` raised for it (a quota, a key used with another body).

        Raises:
            Exception: the store failed; the jobs before the failing one stay recorded, as a
                retry with their idempotency key finds.
        """
        store = await self._reader()
        if store is None or store.dialect != "postgresql":
            return None

        return await asyncio.get_running_loop().run_in_executor(
            self._pool, create_jobs, store, self._namespace, [n.request for n in news])
