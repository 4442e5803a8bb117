"""Who sets a key's limits: every caller of a key offers the limits it was configured with, and
the key keeps the stricter of each field among the offers still fresh.

A plain class with the time passed in, unit-tested without Ray or real time; each
:class:`~raygrade.ratelimit.state._KeyState` has one.
"""

from __future__ import annotations

import functools
import logging

from raygrade.config import RateLimitConfig

logger = logging.getLogger(__name__)

#: A caller's limits stop constraining a key this long after it last offered them (seconds).
OFFER_TTL_S = 300.0
#: At most this many distinct limits are remembered per key (the most recent).
OFFERS_CAP = 16


class LimitOffers:
    """The distinct limits offered for one key, each with when it was last offered.

    Args:
        key: The key (for log lines).
        first: The first caller's limits.
        now: When they were offered, seconds (the limiter's clock).
    """

    def __init__(self, key: str, first: RateLimitConfig, now: float):
        self.key = key
        self.effective = first
        self._offers: list[tuple[RateLimitConfig, float]] = [(first, now)]

    def offer(self, limits: RateLimitConfig, now: float) -> RateLimitConfig | None:
        """Record that a caller configured ``limits``.

        The key's limits are the stricter of each field (:meth:`RateLimitConfig.stricter`) among
        the offers made within :data:`OFFER_TTL_S` (the caller's own included). A caller that
        offers limits differing from the key's is logged once, with the fields that differ.

        Returns:
            The key's new limits when they changed, else ``None``.
        """
        changed = False
        for i, (offered, _) in enumerate(self._offers):
            if offered == limits:
                self._offers[i] = (offered, now)
                break
        else:
            self._offers.append((limits, now))
            changed = True
            differ = sorted(f for f in RateLimitConfig.model_fields
                            if getattr(limits, f) != getattr(self.effective, f))
            logger.warning("callers of %s configure different rate limits (%s); keeping the stricter of each",
                           self.key, ", ".join(differ))
        if len(self._offers) > 1 and (min(t for _, t in self._offers) < now - OFFER_TTL_S
                                      or len(self._offers) > OFFERS_CAP):
            fresh = [o for o in self._offers if o[1] >= now - OFFER_TTL_S][-OFFERS_CAP:]
            changed |= len(fresh) != len(self._offers)
            self._offers = fresh
        if not changed:
            return None
        merged = functools.reduce(RateLimitConfig.stricter, (o for o, _ in self._offers))
        if merged == self.effective:
            return None
        self.effective = merged
        return merged
