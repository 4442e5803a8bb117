"""The rate limiter's API types: what a caller asks for (:data:`Priority`), is granted
(:class:`Reservation`) and reports back (:class:`Settlement`), and the injected clock and sleep."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Priority = Literal["interactive", "bulk"]
Outcome = Literal["ok", "rate_limited", "quota_exhausted", "failure", "client_error"]

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
        prompt_estimate: The caller's prompt-token estimate, before the learned count ratios
            (0: none given); settlement compares the provider's count with it.
        image_estimate: The part of ``prompt_estimate`` that is images (learned separately).
        requested: The tokens the caller asked for, before scaling by the learned ratios.
    """

    id: int
    key: str
    tokens: int
    waited_s: float
    probe: bool = False
    prompt_estimate: int = 0
    image_estimate: int = 0
    requested: int = 0


@dataclasses.dataclass(frozen=True)
class Settlement:
    """How a reserved call ended: what :meth:`RateLimiter.settle` learns from.

    Attributes:
        actual_tokens: ``usage.total_tokens`` when the provider reported it; the reservation
            is then adjusted to it. ``None`` keeps the estimate.
        outcome: ``ok``; ``rate_limited`` (429: pauses the key for everyone); ``quota_exhausted``
            (the provider's daily quota is spent: nothing is sent on the key before
            ``quota_reset_at``, :mod:`raygrade.ratelimit.daily`); ``failure``
            (5xx/timeout/connection: counts for the breaker); ``client_error`` (4xx or invalid
            output: the provider is healthy).
        retry_after_s: The provider's ``Retry-After`` with a 429, seconds.
        headers: Response headers; rate-limit headers under OpenAI's names
            (``x-ratelimit-*``, see :mod:`raygrade.providers.base`) are learned from.
        send_delay_s: Seconds from the caller receiving the grant to the request leaving
            (measured by the HTTP client), or an upper bound from ``openai-processing-ms``; the
            call's charges then leave the window that much later.
        prompt_tokens: The provider's reported prompt tokens. With the reservation's
            ``prompt_estimate`` it updates the key's count ratio (an EWMA, fast up, slow
            down); a ratio outside 0.8–1.25 is logged once per key.
        answer_s: Seconds from the request leaving to its answer, measured by the caller.
            Then ``(now - admission) - answer_s`` bounds the delay from the limiter's admission
            to the request leaving from above (the grant's trip to the caller and the
            settlement's trip back included; durations only, so it holds across nodes whose
            clocks differ).
        completion_tokens: The provider's reported output tokens (``actual_tokens`` less them is
            its input count): the output-tokens window settles to them, the input-tokens window to
            the input count less ``cached_tokens``.
        cached_tokens: Input tokens read from the provider's prompt cache (free of ``itpm``).
        quota_reset_at: With ``quota_exhausted``: when the provider's quota resets, seconds since
            the epoch (``None``: the next midnight Pacific time).
        grant_trip_s: An upper bound on the grant's trip from the limiter to the caller: the
            caller's round trip of ``acquire`` less the ``waited_s`` it reports. Then
            ``send_delay_s + grant_trip_s`` bounds the delay since admission too, and the smaller
            bound is used: the settlement's own trip back, seconds under load, no longer holds
            capacity.
    """

    actual_tokens: int | None = None
    outcome: Outcome = "ok"
    retry_after_s: float | None = None
    headers: Mapping[str, str] | None = None
    send_delay_s: float | None = None
    prompt_tokens: int | None = None
    answer_s: float | None = None
    grant_trip_s: float | None = None
    completion_tokens: int | None = None
    cached_tokens: int = 0
    quota_reset_at: float | None = None
