"""The global rate limiter: one named Ray actor shared by every caller.

Every grader replica, every job and every bulk regrade reserves through the
same actor, so the whole cluster stays under each provider's RPM/TPM. The
actor is detached (it outlives any one replica, Serve app or bulk job) and
looked up by name with ``get_if_exists``, so the first caller creates it and
the rest find it.

Restarts: Ray restarts the actor (``max_restarts=-1``) with empty state. It then
knows it was reconstructed and starts every window as if fully used during
the last minute (:class:`~raygrade.ratelimit.limiter.RateLimiter` with
``restarted=True``); limits travel with every call, so it reconfigures itself.
Callers configured differently never reset each other's key: it keeps the stricter of
each limit its callers offered (:meth:`RateLimiter.configure`).
Callers retry an acquire that the dying actor never answered; a settlement
the new actor does not know only updates headers, pause and breaker.
"""

from __future__ import annotations

import asyncio
import logging

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from raygrade.config import ProviderConfig, RateLimitConfig
from raygrade.ratelimit.limiter import Priority, RateLimiter, Reservation, Settlement
from raygrade.retry import backoff_delay

logger = logging.getLogger(__name__)

#: Name of the shared actor (inside the app's Ray namespace).
RATE_LIMITER_ACTOR_NAME = "raygrade-rate-limiter"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=10_000)  # type: ignore[call-overload]
class RateLimiterActor:
    """The cluster's one rate limiter: a Ray actor wrapping :class:`RateLimiter` (async; many
    callers wait concurrently). It keeps RPM and TPM in sliding 60-s windows per (provider,
    model) key, not a refilling rate limiter (see :mod:`raygrade.ratelimit.limiter`)."""

    def __init__(self):
        restarted = ray.get_runtime_context().was_current_actor_reconstructed
        if restarted:
            logger.warning("rate limiter actor restarted: windows start full, capacity returns at the steady rate")
        self._limiter = RateLimiter(restarted=restarted)
        self._exported: dict[tuple[str, str], float] = {}  # counters already reported, per (key, stat)
        self._export_task: asyncio.Task | None = None

    def _ensure_export(self) -> None:
        if self._export_task is None or self._export_task.done():
            self._export_task = asyncio.get_running_loop().create_task(self._export_loop())

    async def _export_loop(self, every_s: float = 5.0) -> None:
        """Report the limiter's state as metrics (raygrade.metrics), every ``every_s`` seconds."""
        from raygrade.metrics import BREAKER_STATES, Recorder

        m = Recorder()
        counters = {"admitted_requests": "raygrade_limiter_admitted_requests",
                    "admitted_tokens": "raygrade_limiter_admitted_tokens",
                    "rate_limited": "raygrade_limiter_rate_limited",
                    "quota_refused": "raygrade_limiter_quota_refused"}
        while True:
            try:
                for key, snap in self._limiter.snapshot().items():
                    tags = {"key": key}
                    for stat, name in counters.items():
                        delta = snap.get(stat, 0) - self._exported.get((key, stat), 0)
                        m.inc(name, delta, tags)
                        self._exported[(key, stat)] = snap.get(stat, 0)
                    for dim in ("requests", "tokens", "input_tokens", "output_tokens"):
                        if snap.get(f"{dim}_utilisation") is not None:
                            m.set("raygrade_limiter_utilisation", snap[f"{dim}_utilisation"],
                                  {**tags, "dimension": dim})
                    if snap.get("rpd"):
                        m.set("raygrade_limiter_utilisation", min(1.0, snap["day_requests"] / snap["rpd"]),
                              {**tags, "dimension": "requests_per_day"})
                    m.set("raygrade_limiter_waiting", snap["waiting"], tags)
                    m.set("raygrade_limiter_paused", 1.0 if snap["paused_for_s"] > 0 else 0.0, tags)
                    m.set("raygrade_limiter_count_ratio", snap["count_ratio"], {**tags, "content": "text"})
                    m.set("raygrade_limiter_count_ratio", snap["image_count_ratio"], {**tags, "content": "image"})
                    m.set("raygrade_breaker_state", BREAKER_STATES.get(snap["breaker"], 0), tags)
            except Exception:  # metrics never take the limiter down
                logger.exception("rate limiter metrics export failed")
            await asyncio.sleep(every_s)

    async def acquire(self, key: str, tokens: int, limits: RateLimitConfig | None = None,
                      priority: Priority = "interactive", job: str | None = None,
                      prompt_tokens: int | None = None, image_tokens: int | None = None,
                      tenant: str | None = None, output_tokens: int | None = None,
                      patience_s: float | None = None) -> Reservation:
        """Configure ``key`` with ``limits`` if they changed, then wait and reserve."""
        self._ensure_export()
        if limits is not None:
            self._limiter.configure(key, limits)
        return await self._limiter.acquire(key, tokens, priority=priority, job=job, prompt_tokens=prompt_tokens,
                                           image_tokens=image_tokens, tenant=tenant, output_tokens=output_tokens,
                                           patience_s=patience_s)

    async def settle(self, reservation: Reservation, settlement: Settlement) -> None:
        await self._limiter.settle(reservation, settlement)

    async def snapshot(self) -> dict:
        return self._limiter.snapshot()

    async def pid(self) -> int:
        import os

        return os.getpid()


def get_rate_limiter(namespace: str | None = None):
    """Return the shared :class:`RateLimiterActor` of ``namespace``, creating it if needed."""
    return RateLimiterActor.options(  # type: ignore[attr-defined]  # Ray's actor class, not the plain class
        name=RATE_LIMITER_ACTOR_NAME, namespace=namespace, get_if_exists=True, lifetime="detached",
    ).remote()


class ActorLimiter:
    """Async limiter interface over the shared actor (what :class:`BatchGrader` uses).

    Args:
        provider: Its ``rate_limit`` configures the bucket on every call.
        namespace: Ray namespace of the actor (``None``: the caller's).
        priority: ``"interactive"`` (Serve graders) or ``"bulk"`` (regrades).
        actor_retries: How often an acquire is retried after the actor died under it.
    """

    def __init__(self, provider: ProviderConfig, namespace: str | None = None, *,
                 priority: Priority = "interactive", actor_retries: int = 10):
        self._namespace = namespace
        self._actor = get_rate_limiter(namespace)
        self._limits = provider.rate_limit  # travels pickled: no re-validation per call
        self._priority = priority
        self._actor_retries = actor_retries
        self._releases: set[asyncio.Task] = set()  # settlements of grants whose caller gave up

    async def acquire(self, key: str, tokens: int, *, job: str | None = None,
                      prompt_tokens: int | None = None, image_tokens: int | None = None,
                      tenant: str | None = None, output_tokens: int | None = None,
                      patience_s: float | None = None) -> Reservation:
        """Wait until the shared actor admits the call and reserve it (see :meth:`RateLimiter.acquire`).

        A caller cancelled while it waits (its request was cancelled, its job stopped) leaves its
        grant to be settled as unsent when it comes, so it does not hold an in-flight slot of a
        self-hosted model (or its tokens) until ``in_flight_timeout_s``.

        Raises:
            CircuitOpenError: the key's breaker is open.
            QuotaExhaustedError: the key's requests per day are spent beyond ``patience_s``.
            RayActorError: the actor stayed unreachable over ``actor_retries`` attempts.
        """
        for attempt in range(self._actor_retries + 1):
            ref = self._actor.acquire.remote(key, tokens, self._limits, self._priority, job, prompt_tokens,
                                             image_tokens, tenant, output_tokens, patience_s)
            try:
                return await ref
            except asyncio.CancelledError:
                self._abandon(ref)
                raise
            except (ActorDiedError, ActorUnavailableError, RayActorError):
                if attempt == self._actor_retries:
                    raise
                # Restarting (or killed for good: then get_if_exists makes a new one).
                await asyncio.sleep(backoff_delay(attempt, base_s=0.1, cap_s=2.0))
                self._actor = get_rate_limiter(self._namespace)
        raise AssertionError("unreachable")

    def _abandon(self, ref: ray.ObjectRef) -> None:
        """The caller of ``ref`` (an acquire) gave up: settle its reservation as unsent when the
        actor grants it. (``ray.cancel`` is no substitute: a grant that crosses the cancellation
        is then lost to the caller while the actor counts it in flight.)"""
        async def release() -> None:
            try:
                reservation = await ref
            except BaseException:  # refused, or the actor died: nothing is held
                return
            await self.settle(reservation, Settlement(0, outcome="client_error"))

        task = asyncio.get_running_loop().create_task(release())
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def settle(self, reservation: Reservation, settlement: Settlement) -> None:
        try:
            await self._actor.settle.remote(reservation, settlement)
        except (ActorDiedError, ActorUnavailableError, RayActorError):
            logger.info("rate limiter actor restarting; settlement of %s dropped", reservation.id)
