"""A provider's rate limits (:class:`RateLimitConfig`), how two callers' limits combine
(:data:`STRICTER`), and the time zone where a per-day quota resets (:func:`quota_zone`)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RateLimitConfig(_Config):
    """A provider's limits for one model, and how the shared limiter treats them.

    Enforced by :class:`raygrade.ratelimit.limiter.RateLimiter` (one actor for the
    whole cluster), which takes this model as its policy; where callers of one key configure
    it differently, the limiter keeps the stricter of each field (:meth:`stricter`).

    Attributes:
        rpm: Requests per minute (``None``: unlimited unless response headers give one).
        tpm: Tokens per minute, charged as prompt + ``max_tokens`` up front (OpenAI's rule),
            settled with the reported ``usage`` afterwards.
        itpm: Input tokens per minute (Anthropic's rule): the prompt only, settled to the reported
            input less cache reads (which do not count toward it).
        otpm: Output tokens per minute (Anthropic's rule): ``max_tokens`` up front, settled to the
            reported output tokens.
        rpd: Requests per day, counted per calendar day and reset at midnight in
            ``rpd_reset_zone`` (Pacific time: Gemini's rule, :mod:`raygrade.ratelimit.daily`).
            Once the day's requests are spent, a call waits for the reset if its caller's patience
            (``rate_limit_patience_s``) reaches it, else it is refused at once with
            ``quota_exhausted`` naming the reset time. A provider's own per-day refusal spends the
            day the same way, configured or not.
        rpd_reset_zone: Where the provider's day starts (:func:`quota_zone`).
        window_s: The provider's window, seconds (60 for OpenAI; Azure OpenAI checks 1- or
            10-s windows pro rata); the limiter allows ``rpm·window_s/60`` per window.
        window_margin_s: Seconds added to the window for the delay between a
            reservation and the provider counting the call.
        refund_unused: Refund unused ``max_tokens`` on settlement (turn off for a
            provider that keeps charging the estimate).
        learn_from_headers: Lower limits / charge unseen usage from ``x-ratelimit-*`` headers.
        default_backoff_s: Global pause after a 429 that carries no ``Retry-After``.
        breaker_failure_threshold: Consecutive provider failures that open the circuit breaker.
        breaker_cooldown_s: Seconds the breaker stays open before a probe (doubles per failed probe).
        breaker_max_cooldown_s: Cap on that cooldown.
        rejected_requests_count: Whether the provider counts a rejected (429) call against its
            limits. OpenAI documents that it does; many OpenAI-compatible servers do not, and
            then the limiter refunds the rejected call's charge at once instead of keeping it
            for a whole window.
        max_concurrent_requests: Calls in flight at once (admitted, not yet settled): a self-hosted
            model's budget, whose capacity is concurrent sequences, not a per-minute count.
        max_concurrent_tokens: Prompt + ``max_tokens`` in flight at once (the KV-cache budget);
            one larger call still goes when nothing else is in flight.
        in_flight_timeout_s: After this long an unsettled call stops counting (its caller died).
        burst_s: Smooth admission: at most this many seconds' worth of each window's steady rate
            (``limit / window``) is admitted at once, then the steady rate
            (:class:`raygrade.ratelimit.pacer.Pacer`), so a provider that enforces its per-minute
            limit over shorter periods (OpenAI may enforce 60,000 RPM as 1,000 per second) sees
            no bursts; halved, down to 0.1 s, when the provider rejects calls while the window
            has room. ``None``: off (a whole window's worth may go at once), and nothing is learned
            from such rejections.
        short_window_s: The provider also enforces each per-minute limit pro rata over any window
            of this many seconds (OpenAI may enforce a limit over shorter periods; Azure OpenAI
            checks 1- or 10-s windows): the limiter then keeps an exact sliding window of
            ``limit·short_window_s/60`` beside each per-minute one
            (:mod:`raygrade.ratelimit.short`). ``None``: learned — the first rejection that comes
            while the minute had room turns on a 10-s one (with ``burst_s`` set).
    """

    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    itpm: int | None = Field(default=None, gt=0)
    otpm: int | None = Field(default=None, gt=0)
    rpd: int | None = Field(default=None, gt=0)
    rpd_reset_zone: str = Field(default="America/Los_Angeles", description=(
        "Where the provider's day starts (its per-day quotas reset at midnight there): an IANA zone or a fixed "
        "offset such as UTC-08:00 (seconds allowed: UTC+05:03:07)."))
    window_s: float = Field(default=60.0, gt=0, le=3600)
    window_margin_s: float = Field(default=1.0, ge=0, le=60)
    refund_unused: bool = True
    learn_from_headers: bool = True
    default_backoff_s: float = Field(default=1.0, gt=0, le=300)
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_cooldown_s: float = Field(default=30.0, gt=0)
    breaker_max_cooldown_s: float = Field(default=300.0, gt=0)
    rejected_requests_count: bool = True
    max_concurrent_requests: int | None = Field(default=None, gt=0)
    max_concurrent_tokens: int | None = Field(default=None, gt=0)
    in_flight_timeout_s: float = Field(default=900.0, gt=0)
    burst_s: float | None = Field(default=6.0, gt=0, le=3600)
    short_window_s: float | None = Field(default=None, gt=0, le=60)

    @field_validator("rpd_reset_zone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        quota_zone(v)
        return v

    def stricter(self, other: RateLimitConfig) -> RateLimitConfig:
        """The stricter of two callers' limits for the same key, field by field.

        Two callers of one provider and model (replicas of different deployments, a bulk job)
        may be configured differently; the shared limiter then keeps, for each field, the value
        that admits less (:data:`STRICTER`): the lower of two limits (a limit beats none), the
        shorter window (the same rate in smaller bursts), the longer margin, pause and cooldown,
        counting rejected calls, learning from headers, keeping unused ``max_tokens`` charged.

        Returns:
            A new config (``self`` when ``other`` is equal).
        """
        if other == self:
            return self
        return RateLimitConfig(**{name: rule(getattr(self, name), getattr(other, name))
                                  for name, rule in STRICTER.items()})


def quota_zone(name: str) -> dt.tzinfo:
    """The time zone ``name``: an IANA name (``America/Los_Angeles``) or ``UTC±HH:MM[:SS]``.

    Raises:
        ValueError: neither.
    """
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if m := re.fullmatch(r"UTC([+-])(\d{2}):(\d{2})(?::(\d{2}))?", name):
        offset = dt.timedelta(hours=int(m[2]), minutes=int(m[3]), seconds=int(m[4] or 0))
        if offset >= dt.timedelta(hours=24):
            raise ValueError(f"offset {name!r} is not within a day")
        return dt.timezone(-offset if m[1] == "-" else offset)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r} (an IANA name, or UTC+HH:MM)") from exc


def _lower_limit(a: Any, b: Any) -> Any:
    """The lower of two values (limits, a burst, a short window), where ``None`` (none) is the loosest."""
    return b if a is None else a if b is None else min(a, b)


#: For each field of :class:`RateLimitConfig`: which of two values admits less.
STRICTER: dict[str, Any] = {
    "rpm": _lower_limit,
    "tpm": _lower_limit,
    "itpm": _lower_limit,
    "otpm": _lower_limit,
    "rpd": _lower_limit,
    "rpd_reset_zone": lambda a, b: a,  # not an amount: the key's owner (the first caller) sets it
    "window_s": min,
    "window_margin_s": max,
    "refund_unused": lambda a, b: a and b,
    "learn_from_headers": lambda a, b: a or b,
    "default_backoff_s": max,
    "breaker_failure_threshold": min,
    "breaker_cooldown_s": max,
    "breaker_max_cooldown_s": max,
    "rejected_requests_count": lambda a, b: a or b,
    "max_concurrent_requests": _lower_limit,
    "max_concurrent_tokens": _lower_limit,
    "in_flight_timeout_s": max,
    "burst_s": _lower_limit,  # a smaller burst; off is loosest
    "short_window_s": _lower_limit,  # a shorter window; none is loosest
}


