"""Requests per day: a quota counted per calendar day and reset at midnight in a time zone.

Gemini limits requests per day per project and model, the count resetting at midnight Pacific
time (Gemini API, "Rate limits"); a call refused for it (429 ``RESOURCE_EXHAUSTED`` naming a
``…PerDay…`` quota) is refused again until then. :class:`DailyQuota` is that rule for one
limiter key: the configured ``rpd`` counted on the wall clock, and a day the provider said is
spent (whatever the count) until the reset it named. While the day is spent nothing is sent:
each waiter waits for the reset if its patience reaches it, and is refused at once with
:class:`~raygrade.errors.QuotaExhaustedError` (type ``quota_exhausted``, naming the reset) if not.

A :class:`~raygrade.ratelimit.rules.Rule` in the ``requests`` dimension; a plain class with the
wall clock injected, unit-tested on a virtual clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from raygrade.errors import QuotaExhaustedError

#: Where Gemini's per-day quotas reset: midnight in this zone.
PACIFIC = ZoneInfo("America/Los_Angeles")


def next_midnight(now: float, zone: dt.tzinfo = PACIFIC) -> float:
    """The first midnight in ``zone`` after ``now``, both in seconds since the epoch (UTC).

    A calendar day, not 86,400 s: across a daylight-saving change the day is 23 or 25 hours.
    """
    local = dt.datetime.fromtimestamp(now, dt.UTC).astimezone(zone)
    return dt.datetime.combine(local.date() + dt.timedelta(days=1), dt.time(), tzinfo=zone).timestamp()


def iso(ts: float, zone: dt.tzinfo = PACIFIC) -> str:
    """``ts`` (epoch seconds) as an ISO 8601 time in ``zone``."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).astimezone(zone).isoformat()


class DailyQuota:
    """One key's requests per day.

    Args:
        limit: Requests per day (``None``: no configured limit; the day can still be spent
            when the provider says so, :meth:`spend`).
        wall: The wall clock, seconds since the epoch (``time.time``).
        zone: Where the day starts.
    """

    def __init__(self, limit: int | None, wall: Callable[[], float], zone: dt.tzinfo = PACIFIC):
        self.limit, self._wall, self._zone = limit, wall, zone
        self.used = 0
        self.resets_at = next_midnight(wall(), zone)
        self.spent_until = 0.0  # the provider refused for the day: nothing goes before this

    def _roll(self, now: float) -> None:
        if now >= self.resets_at:
            self.used, self.resets_at = 0, next_midnight(now, self._zone)

    def set_zone(self, zone: dt.tzinfo) -> None:
        """Count days in ``zone`` from now on: the current day ends at the next midnight there."""
        if zone != self._zone:
            self._zone = zone
            self.resets_at = next_midnight(self._wall(), zone)

    def wait(self) -> float:
        """Seconds until one more request is allowed today (0: now): to the reset when the
        day's count is at the limit or the provider said the day is spent."""
        if self.limit is None and not self.spent_until:
            return 0.0
        now = self._wall()
        self._roll(now)
        if self.spent_until > now:
            return self.spent_until - now
        if self.limit is not None and self.used >= self.limit:
            return self.resets_at - now
        return 0.0

    def wait_for(self, amount: float, now: float) -> float:
        """:meth:`wait` as a :class:`~raygrade.ratelimit.rules.Rule` (``amount`` and the limiter's
        ``now`` aside: a day is counted in requests on the wall clock)."""
        return self.wait()

    def charge(self, amount: float = 1, now: float | None = None) -> float | None:
        """Count one admitted request; returns the day it was counted in (its reset time, for
        :meth:`adjust`), or ``None`` when no limit is configured."""
        if self.limit is None:
            return None
        self._roll(self._wall())
        self.used += 1
        return self.resets_at

    def adjust(self, entry: float | None, new_amount: float, now: float | None = None) -> None:
        """Take back a request counted in day ``entry`` (:meth:`charge`'s value) when the provider
        did not count it (``new_amount`` 0: a rejection it does not count); a day already over
        is left alone, and any other amount keeps the request counted."""
        if entry is not None and new_amount <= 0 and entry == self.resets_at:
            self.used = max(0, self.used - 1)

    def postpone(self, entry: float | None, seconds: float, now: float) -> None:
        """Nothing to do: a request counts in the day it was admitted in."""

    def prefill(self, now: float) -> None:
        """Nothing to do: the day's count before a restart is unknown, and the provider's own
        per-day refusal (:meth:`spend`) stops the key when it is spent."""

    def spend(self, until: float | None) -> None:
        """The provider refused a call for its daily quota: nothing is sent before ``until``
        (epoch seconds; ``None``: the next midnight in the zone) and the day's count is full."""
        now = self._wall()
        self._roll(now)
        self.spent_until = max(self.spent_until, until if until is not None and until > now else self.resets_at)
        if self.limit is not None:
            self.used = max(self.used, self.limit)

    def refusal(self, key: str, wait_s: float, patience_s: float) -> QuotaExhaustedError:
        """The error for a caller that will not wait ``wait_s`` for the reset (its patience is
        ``patience_s``)."""
        until = self._wall() + wait_s
        why = f"rpd={self.limit} counted" if self.spent_until <= self._wall() else "the provider refused it"
        return QuotaExhaustedError(
            f"requests per day for {key} are spent until {iso(until, self._zone)} ({why}); the call would "
            f"wait {wait_s:.0f} s, longer than its patience of {patience_s:.0f} s", provider_status=429,
            code="requests_per_day", reset_at=until)

    def snapshot(self) -> dict[str, Any]:
        """``rpd``, ``day_requests`` (counted today), ``day_resets_at`` and ``day_spent_until``
        (ISO 8601; ``None`` when not spent)."""
        now = self._wall()
        self._roll(now)
        return {"rpd": self.limit, "day_requests": self.used, "day_resets_at": iso(self.resets_at, self._zone),
                "day_spent_until": iso(self.spent_until, self._zone) if self.spent_until > now else None}


def refuse_impatient(quota: DailyQuota, key: str, waiters: list[Any], wait_s: float) -> int:
    """Refuse, with :meth:`DailyQuota.refusal`, every waiter of ``key`` whose ``patience`` is
    shorter than ``wait_s`` (the quota's reset), and remove them from ``waiters`` (the limiter's
    queue of :class:`~raygrade.ratelimit.state._Waiter`); returns how many were refused."""
    refused = [w for w in waiters if w.patience is not None and w.patience < wait_s]
    for w in refused:
        waiters.remove(w)
        if not w.future.done():
            w.future.set_exception(quota.refusal(key, wait_s, w.patience))
    return len(refused)
