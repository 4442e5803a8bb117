"""The rate limiter's types and per-key state: reservations, waiters, open charges, windows per key.

:class:`~raygrade.ratelimit.limiter.RateLimiter` keeps one :class:`_KeyState` per (provider,
model) key: its sliding windows (:mod:`raygrade.ratelimit.window`), learned limits, circuit
breaker (:mod:`raygrade.ratelimit.breaker`), queue of waiters and statistics.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Literal

from raygrade.config import RateLimitConfig
from raygrade.ratelimit.breaker import CircuitBreaker
from raygrade.ratelimit.window import Charge, SlidingWindow

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Priority = Literal["interactive", "bulk"]
Outcome = Literal["ok", "rate_limited", "failure", "client_error"]

#: Reservations not settled after this long are forgotten (checked once the map is large).
OPEN_RESERVATION_TTL_S = 3600.0
OPEN_RESERVATIONS_SOFT_CAP = 10_000

#: Settled calls needed before a learned count ratio below 1 shrinks reservations.
RATIO_MIN_SAMPLES = 3
#: EWMA weights of a new ratio sample: fast up (an under-estimate causes 429s), slow down.
RATIO_ALPHA_UP, RATIO_ALPHA_DOWN = 0.5, 0.1
#: Outside this band the estimates are off enough to warn about.
RATIO_WARN_BAND = (0.8, 1.25)

#: Lower rank goes first.
PRIORITY_RANK: dict[str, int] = {"interactive": 0, "bulk": 1}


@dataclasses.dataclass(frozen=True)
class Reservation:
    """What :meth:`RateLimiter.acquire` granted; pass it back to :meth:`RateLimiter.settle`.

    Attributes:
        id: Reservation id (unique within one limiter instance).
        key: The bucket key.
        tokens: Tokens reserved.
        waited_s: Seconds spent queued.
        probe: Whether this call is a circuit-breaker probe.
        prompt_estimate: The caller's prompt-token estimate, before the learned count ratio
            (0: none given); settlement compares the provider's count with it.
    """

    id: int
    key: str
    tokens: int
    waited_s: float
    probe: bool = False
    prompt_estimate: int = 0


@dataclasses.dataclass
class _Waiter:
    seq: int
    tokens: int
    rank: int
    job: str
    future: asyncio.Future
    enqueued: float
    prompt: int = 0


@dataclasses.dataclass
class _Open:
    reservation: Reservation
    req: Charge | None
    tok: Charge | None
    admitted_at: float


class _KeyState:
    def __init__(self, key: str, limits: RateLimitConfig):
        self.key, self.limits = key, limits
        self.scale = limits.window_s / 60.0  # per-minute limit -> per-window limit
        self.window_s = limits.window_s + limits.window_margin_s
        self.learned: dict[str, float] = {}  # per minute
        self.req: SlidingWindow | None = None
        self.tok: SlidingWindow | None = None
        self.apply_limits()
        self.breaker = self._breaker(limits)
        self.waiters: list[_Waiter] = []
        self.vtime: dict[tuple[int, str], float] = {}
        self.vclock: dict[int, float] = {}
        self.paused_until = 0.0
        self.in_flight_requests = 0  # admitted, not yet settled (max_concurrent_* limits)
        self.in_flight_tokens = 0
        # The provider's prompt-token count ÷ the callers' estimates (EWMA), and its evidence.
        self.count_ratio = 1.0
        self.ratio_samples = 0
        self.ratio_warned = False
        self.prompt_in_flight = 0  # in-flight calls that carry a prompt estimate (the learning probes)
        self.timer: asyncio.Task | None = None
        self.stats = {"admitted_requests": 0, "admitted_tokens": 0, "settled_tokens": 0, "rate_limited": 0,
                      "failures": 0, "rejected_open": 0, "header_corrections": 0}

    def over_concurrency(self, tokens: int, prompt: int = 0) -> bool:
        """Whether admitting a call of ``tokens`` would exceed the key's in-flight limits.

        Until :data:`RATIO_MIN_SAMPLES` calls have taught the provider's prompt count, at most
        that many calls with a prompt estimate fly at once (a slow start): an estimate the
        provider counts far higher then costs a few rejected calls, not a window's worth.
        """
        if prompt and self.ratio_samples < RATIO_MIN_SAMPLES \
                and self.prompt_in_flight >= RATIO_MIN_SAMPLES - self.ratio_samples:
            return True
        lim = self.limits
        if lim.max_concurrent_requests is not None and self.in_flight_requests >= lim.max_concurrent_requests:
            return True
        return (lim.max_concurrent_tokens is not None and self.in_flight_requests > 0
                and self.in_flight_tokens + tokens > lim.max_concurrent_tokens)

    def release(self, reservation: Reservation) -> None:
        """A reserved call ended (settled or forgotten): its in-flight slot and tokens are free."""
        self.in_flight_requests = max(0, self.in_flight_requests - 1)
        self.in_flight_tokens = max(0, self.in_flight_tokens - reservation.tokens)
        if reservation.prompt_estimate:
            self.prompt_in_flight = max(0, self.prompt_in_flight - 1)

    def prompt_ratio(self) -> float:
        """The ratio reservations use: the learned one once 3 calls back it, never below 1 before."""
        return self.count_ratio if self.ratio_samples >= RATIO_MIN_SAMPLES else max(1.0, self.count_ratio)

    @staticmethod
    def _breaker(limits: RateLimitConfig) -> CircuitBreaker:
        return CircuitBreaker(failure_threshold=limits.breaker_failure_threshold,
                              cooldown_s=limits.breaker_cooldown_s, max_cooldown_s=limits.breaker_max_cooldown_s)

    def window(self, dim: str) -> SlidingWindow | None:
        return self.req if dim == "requests" else self.tok

    def effective(self, dim: str) -> float | None:
        """The per-minute limit in force: the configured one, lowered by a learned one."""
        configured = self.limits.rpm if dim == "requests" else self.limits.tpm
        learned = self.learned.get(dim)
        if configured and learned:
            return min(configured, learned)
        return configured or learned

    def apply_limits(self) -> None:
        for dim in ("requests", "tokens"):
            eff, w = self.effective(dim), self.window(dim)
            if eff is None:
                w = None
            elif w is None:
                w = SlidingWindow(eff * self.scale, self.window_s)
            else:
                w.limit = float(eff * self.scale)
            if dim == "requests":
                self.req = w
            else:
                self.tok = w
