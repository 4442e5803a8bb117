"""A tenant's quota and usage: the body of ``GET /v1/usage`` and what ``raygrade quotas`` sets."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from raygrade.protocol._base import _Model

#: The rolling window of the per-day quotas, in seconds.
QUOTA_WINDOW_S = 86_400.0


class TenantQuota(_Model):
    """A tenant's limits on new jobs; ``None`` is no limit (and a tenant without a quota has none).

    Attributes:
        max_active_jobs: Jobs that may be queued or running at once; a new job beyond it is a
            429 until one ends (or is cancelled). 0 refuses every new job.
        items_per_day: Items (student × question) the tenant's jobs accepted in the last
            24 hours (rolling) may hold, the new job's included; a job larger than the whole
            quota is refused outright.
        tokens_per_day: Provider tokens (prompt + completion) the tenant's jobs accepted in the
            last 24 hours may have used; once reached, new jobs are refused until older ones
            leave the window (jobs already accepted run to the end: a job's tokens are known
            only as it is graded).
        file_bytes: Bytes of uploaded files (the Files API) the tenant may keep stored; an upload
            that would pass it is refused (HTTP 429 ``insufficient_quota``, code ``file_bytes``) until
            the tenant deletes files. Pages of jobs already accepted do not count.
    """

    # Bounded by the store's columns (INTEGER, BIGINT): a larger value is a 400 or a one-line CLI error.
    max_active_jobs: int | None = Field(default=None, ge=0, le=2**31 - 1)
    items_per_day: int | None = Field(default=None, ge=0, le=2**63 - 1)
    tokens_per_day: int | None = Field(default=None, ge=0, le=2**63 - 1)
    file_bytes: int | None = Field(default=None, ge=0, le=2**63 - 1)


class TenantUsage(_Model):
    """The body of ``GET /v1/usage``: the caller's quota and what counts against it now."""

    object: Literal["tenant.usage"] = "tenant.usage"
    tenant: str
    window_s: float = Field(default=QUOTA_WINDOW_S, description="The rolling window of the per-day quotas.")
    active_jobs: int = Field(description="Jobs queued or running.")
    items: int = Field(description="Items of the jobs accepted in the window.")
    tokens: int = Field(description="Prompt + completion tokens used by the jobs accepted in the window.")
    files: int = Field(default=0, description="Files stored (the Files API).")
    file_bytes: int = Field(default=0, description="Bytes of the files stored.")
    quota: TenantQuota | None = Field(default=None, description="The tenant's limits; null: none.")
