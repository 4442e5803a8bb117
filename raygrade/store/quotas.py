"""Tenants' quotas: how many jobs a tenant may have active, and how many items and tokens its
jobs may take in a rolling day (:class:`raygrade.protocol.TenantQuota`).

Quotas are checked when a job is created, in the transaction that records it, so two
registry replicas cannot both let a tenant past its quota (on PostgreSQL the check holds a
transaction-scoped advisory lock per tenant; a SQLite store has one writer thread). A replay
of an idempotency key returns its job whatever the quota says: the job was accepted before.
A refusal is a :class:`QuotaExceededError` (HTTP 429, ``insufficient_quota``) whose
``retry_after_s`` is when the rolling window will have room, from the creation times of the
tenant's jobs in it. Usage counts every namespace of the database, as a tenant's keys do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from raygrade.errors import QuotaExceededError
from raygrade.protocol import QUOTA_WINDOW_S, TenantQuota, TenantUsage
from raygrade.store.keys import check_tenant
from raygrade.store.schema import files, jobs, tenant_quotas

#: Job states that count against ``max_active_jobs``.
ACTIVE_STATES = ("queued", "running")


def _lock_key(tenant: str) -> int:
    """A signed 64-bit PostgreSQL advisory-lock key for ``tenant``'s quota."""
    return int.from_bytes(hashlib.sha256(b"raygrade-quota:" + tenant.encode()).digest()[:8], "big", signed=True)


def _quota(row) -> TenantQuota:
    return TenantQuota(max_active_jobs=row.max_active_jobs, items_per_day=row.items_per_day,
                       tokens_per_day=row.tokens_per_day, file_bytes=row.file_bytes)


class TenantQuotas:
    """Quota operations of :class:`raygrade.store.JobStore` (needs ``engine``, ``dialect``, ``_clock``
    and ``_insert`` of :class:`raygrade.store.core.StoreCore`)."""

    engine: sa.Engine
    dialect: str
    _clock: Callable[[], float]
    _insert: Callable[[sa.Table], Any]

    # -- the operator's side (``raygrade quotas``) ----------------------------------------------
    def set_quota(self, tenant: str, quota: TenantQuota) -> TenantQuota:
        """Set (replace) ``tenant``'s quota; it applies to the next job the tenant submits.

        Raises:
            InvalidRequestError: ``tenant`` is not a tenant name (:func:`check_tenant`).
        """
        check_tenant(tenant)
        values = {**quota.model_dump(), "updated_at": self._clock()}
        with self.engine.begin() as conn:
            conn.execute(self._insert(tenant_quotas).values(tenant=tenant, **values)
                         .on_conflict_do_update(index_elements=["tenant"], set_=values))
        return quota

    def clear_quota(self, tenant: str) -> bool:
        """Remove ``tenant``'s quota (no limits); False if it had none."""
        with self.engine.begin() as conn:
            return conn.execute(tenant_quotas.delete().where(tenant_quotas.c.tenant == tenant)).rowcount == 1

    def get_quota(self, tenant: str) -> TenantQuota | None:
        """``tenant``'s quota, or ``None`` when it has none."""
        with self.engine.connect() as conn:
            return self._quota_of(conn, tenant)

    def list_quotas(self) -> dict[str, TenantQuota]:
        """Every tenant's quota, by tenant name (sorted)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(tenant_quotas).order_by(tenant_quotas.c.tenant))
            return {r.tenant: _quota(r) for r in rows}

    # -- the tenant's side ------------------------------------------------------------------------
    def usage(self, tenant: str) -> TenantUsage:
        """``tenant``'s quota and its usage now: active jobs, the items and tokens of its jobs
        accepted in the last :data:`QUOTA_WINDOW_S` seconds, and its stored files."""
        with self.engine.connect() as conn:
            items, tokens = self._window_usage(conn, tenant, self._clock())
            n_files, n_bytes = self._stored_files(conn, tenant)
            return TenantUsage(tenant=tenant, active_jobs=self._active_jobs(conn, tenant), items=items,
                               tokens=tokens, files=n_files, file_bytes=n_bytes, quota=self._quota_of(conn, tenant))

    def check_file_quota(self, tenant: str, size: int) -> None:
        """Raise what :meth:`~raygrade.store.files.Files.create_file` would for a new file of ``size``
        bytes now (a cheap check before an upload is read; the authoritative one is in the file's
        transaction).

        Raises:
            QuotaExceededError: the tenant's ``file_bytes`` quota refuses the file (HTTP 429).
        """
        with self.engine.connect() as conn:
            self._enforce_file_quota(conn, tenant, size)

    @staticmethod
    def _stored_files(conn, tenant: str) -> tuple[int, int]:
        row = conn.execute(sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(files.c.bytes), 0))
                           .where(files.c.tenant == tenant)).one()
        return int(row[0]), int(row[1])

    def _enforce_file_quota(self, conn, tenant: str, size: int) -> None:
        if (quota := self._quota_of(conn, tenant)) is None or quota.file_bytes is None:
            return
        _, stored = self._stored_files(conn, tenant)
        if stored + size > quota.file_bytes:
            raise QuotaExceededError(
                f"tenant {tenant!r} stores {stored} bytes of files and its quota allows {quota.file_bytes}; "
                f"a file of {size} bytes does not fit: delete files (DELETE /v1/files/{{file_id}})",
                code="file_bytes")

    def check_quota(self, tenant: str, items: int, namespace: str = "raygrade",
                    idempotency_key: str | None = None) -> None:
        """Raise what :meth:`create_job` would for a new job of ``items`` items now: a cheap check
        before the job's pages are decoded (the authoritative one is in the job's transaction).
        A job that ``idempotency_key`` already names passes (its replay is never refused).

        Raises:
            QuotaExceededError: the tenant's quota refuses the job (HTTP 429).
        """
        with self.engine.connect() as conn:
            if (quota := self._quota_of(conn, tenant)) is None:
                return
            if idempotency_key is not None and conn.execute(sa.select(jobs.c.id).where(
                    jobs.c.namespace == namespace, jobs.c.tenant == tenant,
                    jobs.c.idempotency_key == idempotency_key)).first() is not None:
                return
            self._enforce_quota(conn, tenant, quota, items)

    # -- inside create_job's transaction ----------------------------------------------------------
    def _quota_of(self, conn, tenant: str) -> TenantQuota | None:
        row = conn.execute(sa.select(tenant_quotas).where(tenant_quotas.c.tenant == tenant)).first()
        return None if row is None else _quota(row)

    def _lock_quota(self, conn, tenant: str) -> None:
        """Serialise quota checks of ``tenant`` until the transaction ends (PostgreSQL)."""
        if self.dialect == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(tenant)})

    @staticmethod
    def _active_jobs(conn, tenant: str) -> int:
        return conn.execute(sa.select(sa.func.count()).select_from(jobs).where(
            jobs.c.tenant == tenant, jobs.c.state.in_(ACTIVE_STATES))).scalar_one()

    @staticmethod
    def _window_usage(conn, tenant: str, now: float) -> tuple[int, int]:
        row = conn.execute(sa.select(
            sa.func.coalesce(sa.func.sum(jobs.c.items_total), 0),
            sa.func.coalesce(sa.func.sum(jobs.c.prompt_tokens + jobs.c.completion_tokens), 0),
        ).where(jobs.c.tenant == tenant, jobs.c.created_at > now - QUOTA_WINDOW_S)).one()
        return int(row[0]), int(row[1])

    @staticmethod
    def _room_at(conn, tenant: str, now: float, column, excess: int) -> float:
        """Seconds until the tenant's oldest jobs in the window, leaving it, free ``excess`` of ``column``."""
        rows = conn.execute(sa.select(jobs.c.created_at, column).where(
            jobs.c.tenant == tenant, jobs.c.created_at > now - QUOTA_WINDOW_S).order_by(jobs.c.created_at))
        freed = 0
        for created_at, amount in rows:
            freed += int(amount)
            if freed >= excess:
                return max(0.0, created_at + QUOTA_WINDOW_S - now)
        return QUOTA_WINDOW_S  # not reached: the window's usage is at least the excess

    def _enforce_quota(self, conn, tenant: str, quota: TenantQuota, items: int) -> None:
        """Raise :class:`QuotaExceededError` if ``quota`` refuses a new job of ``items`` items now."""
        if quota.max_active_jobs is not None and (active := self._active_jobs(conn, tenant)) >= quota.max_active_jobs:
            raise QuotaExceededError(
                f"tenant {tenant!r} has {active} active jobs and its quota allows {quota.max_active_jobs}; "
                "wait for one to end, or cancel one", code="max_active_jobs")
        if quota.items_per_day is None and quota.tokens_per_day is None:
            return
        now = self._clock()
        used_items, used_tokens = self._window_usage(conn, tenant, now)
        if quota.items_per_day is not None and used_items + items > quota.items_per_day:
            if items > quota.items_per_day:
                raise QuotaExceededError(f"the job has {items} items and tenant {tenant!r}'s quota allows "
                                         f"{quota.items_per_day} a day; split it", code="items_per_day")
            wait = self._room_at(conn, tenant, now, jobs.c.items_total, used_items + items - quota.items_per_day)
            raise QuotaExceededError(
                f"tenant {tenant!r} has used {used_items} of its {quota.items_per_day} items a day; this job's "
                f"{items} fit in {wait:.0f} s", code="items_per_day", retry_after_s=wait)
        if quota.tokens_per_day is not None and used_tokens >= quota.tokens_per_day:
            wait = self._room_at(conn, tenant, now, jobs.c.prompt_tokens + jobs.c.completion_tokens,
                                 used_tokens - quota.tokens_per_day + 1)
            raise QuotaExceededError(
                f"tenant {tenant!r} has used {used_tokens} of its {quota.tokens_per_day} tokens a day; "
                f"room in {wait:.0f} s at the earliest", code="tokens_per_day", retry_after_s=wait)
