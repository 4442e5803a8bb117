"""The global token bucket: one named Ray actor shared by every caller.

Every grader replica, every job and every bulk regrade reserves through the
same actor, so the whole cluster stays under each provider's RPM/TPM. The
actor is detached (it outlives any one replica or Serve app) and looked up by
name with ``get_if_exists``, so the first caller creates it and the rest find it.
"""

from __future__ import annotations

import ray

from raygrade.config import ProviderConfig
from raygrade.ratelimit.bucket import RateLimiter, Reservation

#: Name of the shared actor (inside the app's Ray namespace).
TOKEN_BUCKET_ACTOR_NAME = "raygrade-token-bucket"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=10_000)
class TokenBucketActor:
    """Ray actor wrapping :class:`RateLimiter` (async; many callers wait concurrently)."""

    def __init__(self):
        self._limiter = RateLimiter()

    async def configure(self, key: str, rpm: int | None, tpm: int | None) -> None:
        self._limiter.configure(key, rpm, tpm)

    async def acquire(self, key: str, tokens: int, rpm: int | None = None,
                      tpm: int | None = None) -> Reservation:
        """Configure ``key`` with (rpm, tpm) if needed, then wait and reserve."""
        self._limiter.configure(key, rpm, tpm)
        return await self._limiter.acquire(key, tokens)

    async def settle(self, reservation_id: int, actual_tokens: int | None) -> None:
        await self._limiter.settle(reservation_id, actual_tokens)

    async def snapshot(self) -> dict:
        return {"buckets": self._limiter.snapshot(),
                "admitted_requests": self._limiter.admitted_requests,
                "admitted_tokens": self._limiter.admitted_tokens}


def get_token_bucket(namespace: str):
    """Return the shared token-bucket actor of ``namespace``, creating it if needed."""
    return TokenBucketActor.options(
        name=TOKEN_BUCKET_ACTOR_NAME, namespace=namespace, get_if_exists=True, lifetime="detached",
    ).remote()


class ActorLimiter:
    """Async limiter interface over the shared actor (what :class:`BatchGrader` uses).

    Args:
        provider: Its ``bucket_key`` and ``rate_limit`` configure the bucket.
        namespace: Ray namespace of the actor.
    """

    def __init__(self, provider: ProviderConfig, namespace: str):
        self._actor = get_token_bucket(namespace)
        self._limits = (provider.rate_limit.rpm, provider.rate_limit.tpm)

    async def acquire(self, key: str, tokens: int) -> Reservation:
        # The limits travel with every call, so a restarted actor reconfigures itself.
        return await self._actor.acquire.remote(key, tokens, *self._limits)

    async def settle(self, reservation_id: int, actual_tokens: int | None) -> None:
        await self._actor.settle.remote(reservation_id, actual_tokens)
