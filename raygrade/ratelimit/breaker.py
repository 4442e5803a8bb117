"""A circuit breaker per provider: stop sending while it fails, probe before reopening.

States (Nygard, *Release It!*, 2nd ed., ch. 5 "Circuit Breaker"):

- ``closed``: calls flow; ``failure_threshold`` consecutive failures open it.
- ``open``: calls are refused for ``cooldown_s``; each failed probe doubles the
  cooldown up to ``max_cooldown_s``.
- ``half_open``: after the cooldown, ``probes`` calls at a time go through; a
  success closes the breaker (cooldown back to its base), a failure opens it again.

Only failures of the provider count (5xx, timeouts, connection errors). 429s
are the rate limiter's business and 4xx/invalid output are the caller's, so
neither opens the breaker. Clock injected: unit-tested without real time.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class CircuitBreaker:
    """One provider's breaker. Times are seconds on the limiter's monotonic clock."""

    failure_threshold: int = 5
    cooldown_s: float = 30.0
    max_cooldown_s: float = 300.0
    probes: int = 1
    state: str = "closed"
    consecutive_failures: int = 0
    opened_at: float = 0.0
    current_cooldown_s: float = 0.0
    probes_in_flight: int = 0
    probe_started: float = 0.0
    times_opened: int = 0

    def _tick(self, now: float) -> None:
        if self.state == "open" and now >= self.opened_at + self.current_cooldown_s:
            self.state, self.probes_in_flight = "half_open", 0
        elif (self.state == "half_open" and self.probes_in_flight
              and now >= self.probe_started + self.current_cooldown_s):
            self.probes_in_flight = 0  # a probe that never reported back (its caller died) frees its slot

    def retry_in(self, now: float) -> float:
        """Seconds until the breaker lets a call through (0.0 when it does now)."""
        self._tick(now)
        if self.state == "closed":
            return 0.0
        if self.state == "open":
            return self.opened_at + self.current_cooldown_s - now
        if self.probes_in_flight < self.probes:
            return 0.0
        return max(0.0, self.probe_started + self.current_cooldown_s - now)

    def on_admit(self, now: float) -> bool:
        """Record that a call was sent; returns whether it is a half-open probe."""
        self._tick(now)
        if self.state == "half_open":
            self.probes_in_flight += 1
            self.probe_started = now
            return True
        return False

    def on_success(self, probe: bool) -> None:
        """A call succeeded (any answer that was not a provider failure)."""
        self.consecutive_failures = 0
        if probe or self.state == "half_open":
            self.state, self.probes_in_flight, self.current_cooldown_s = "closed", 0, 0.0

    def on_failure(self, now: float, probe: bool) -> None:
        """A call failed on the provider's side (5xx, timeout, connection error)."""
        self._tick(now)
        self.consecutive_failures += 1
        if self.state == "half_open" and probe:
            self._open(now, min(self.max_cooldown_s, max(self.cooldown_s, 2 * self.current_cooldown_s)))
        elif self.state == "closed" and self.consecutive_failures >= self.failure_threshold:
            self._open(now, self.cooldown_s)

    def _open(self, now: float, cooldown: float) -> None:
        self.state, self.opened_at, self.current_cooldown_s = "open", now, cooldown
        self.probes_in_flight = 0
        self.times_opened += 1
