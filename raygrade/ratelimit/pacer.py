"""Smooth admission within a window: a continuously refilled token bucket.

A :class:`~raygrade.ratelimit.window.SlidingWindow` admits at most its limit in any window, but
all of it at once if the callers are ready: measured against an independent provider, 90 % of a
minute's TPM went out within 10 s, and a provider that enforces its per-minute limit over shorter
periods (OpenAI: 60,000 RPM may be enforced as 1,000 per second; Azure: 1- or 10-s windows)
rejects that. A :class:`Pacer` in front of the window lets out at most ``burst_s`` seconds' worth
of the window's rate at once and then the steady rate (``limit / window_s`` per second): the
generic cell rate algorithm's bucket (ITU-T I.371), with its level in units instead of a
theoretical arrival time. The window stays the hard cap; the pacer only spreads the admissions in
it.

A call larger than the bucket goes when the bucket is full and leaves it in debt (the level
below zero), so the long-run rate holds and no call waits forever. Refunds (a settlement below the
estimate) and corrections upward move the level too.
"""

from __future__ import annotations

#: The smallest burst learning goes down to (:func:`raygrade.ratelimit.learning.learn_burst`).
MIN_BURST_S = 0.1
#: The lowest share of the window's rate learning paces at, once the burst is at its floor.
MIN_RATE_SCALE = 0.85


class Pacer:
    """A token bucket of ``rate · burst_s`` units refilled at ``rate`` units per second.

    The rate is the caller's (its window's ``limit / window_s``), passed on every call so that a
    learned or reconfigured limit takes effect at once.

    Args:
        burst_s: Seconds' worth of the rate admitted at once; must be > 0.
        now: The clock's time at creation (seconds).
        full: Start with a full bucket (``False`` after a restart: nothing is known about what
            was just sent, so capacity comes back at the steady rate).

    Raises:
        ValueError: ``burst_s`` is not positive.
    """

    def __init__(self, burst_s: float, now: float = 0.0, *, full: bool = True):
        if burst_s <= 0:
            raise ValueError("burst_s must be > 0")
        self.burst_s = float(burst_s)
        self.scale = 1.0  # share of the given rate let out (learned down from 429s: learn_burst)
        self._level: float | None = None if full else 0.0  # None: full at the first rate seen
        self._t = now

    def _refill(self, rate: float, now: float) -> float:
        rate *= self.scale
        cap = rate * self.burst_s
        if self._level is None:
            self._level = cap
        else:
            self._level = min(cap, self._level + rate * max(0.0, now - self._t))
        self._t = max(self._t, now)
        return cap

    def wait_for(self, amount: float, rate: float, now: float) -> float:
        """Seconds from ``now`` until ``amount`` units may go (0.0 if now): until the bucket holds
        ``amount``, or is full when ``amount`` is larger than the bucket."""
        if amount <= 0 or rate <= 0:
            return 0.0
        cap = self._refill(rate, now)
        need = min(float(amount), cap)
        assert self._level is not None
        return 0.0 if self._level >= need - 1e-9 else (need - self._level) / (rate * self.scale)

    def take(self, amount: float, rate: float, now: float) -> None:
        """Let ``amount`` units go (the caller checked :meth:`wait_for`); ``amount`` may be negative
        (a refund), which refills the bucket up to its size."""
        cap = self._refill(rate, now)
        assert self._level is not None
        self._level = min(cap, self._level - float(amount))

    def empty(self, now: float) -> None:
        """Empty the bucket (a restart: capacity comes back at the steady rate)."""
        self._level, self._t = 0.0, now

    @property
    def level(self) -> float | None:
        """Units in the bucket at the last call (``None`` before the first)."""
        return self._level
