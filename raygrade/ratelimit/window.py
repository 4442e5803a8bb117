"""Per-minute budgets as a sliding-window log, and parsing of ``x-ratelimit-*`` headers.

Plain classes with an injected clock: unit-tested without Ray or real time.

Within the window, admissions are spread by an optional :class:`~raygrade.ratelimit.pacer.Pacer`
(:attr:`SlidingWindow.pacer`): at most a burst, then the window's steady rate.

Why a sliding window and not a continuously refilled bucket: a bucket of one
minute's capacity refilled at ``limit/60`` per second admits up to *two*
minutes' worth in the first 60 s after it was idle, which a provider that
counts any trailing minute rejects. A log of what was charged in the last
``window_s`` seconds admits at most ``limit`` in any window of that length,
which is also within the limit of a fixed-window or a continuously refilled
provider (any interval of length T then holds at most ``ceil(T/60)·limit ≤
limit + limit·T/60``). The charge of a call "refills" exactly one window after
it was made, so the actor that owns these windows is still the cluster's token
bucket in the usual sense.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Mapping

from raygrade.ratelimit.pacer import Pacer


@dataclasses.dataclass
class Charge:
    """One entry in a :class:`SlidingWindow`: ``amount`` units charged at ``t`` (seconds)."""

    t: float
    amount: float
    expires: float
    before: float = 0.0          # amount before the last adjustment
    adjusted_at: float = float("-inf")
    paced: bool = False          # taken from the window's pacer (an admission, not a header correction)
    assumed: bool = False        # not a call: usage assumed after a restart (:meth:`SlidingWindow.prefill`)

    def peak_since(self, since: float) -> float:
        """The largest amount this entry had at any time after ``since``."""
        return max(self.amount, self.before) if self.adjusted_at >= since else self.amount


class SlidingWindow:
    """At most ``limit`` units charged in any ``window_s``-second window: the per-minute
    :class:`~raygrade.ratelimit.rules.Rule`.

    Args:
        limit: Units (requests or tokens) per window; must be > 0.
        window_s: Window length in seconds (60 plus a safety margin for the
            delay between reserving here and the provider counting the call).

    Raises:
        ValueError: ``limit`` or ``window_s`` is not positive.
    """

    def __init__(self, limit: float, window_s: float = 60.0):
        if limit <= 0 or window_s <= 0:
            raise ValueError("limit and window_s must be > 0")
        self.limit, self.window_s = float(limit), float(window_s)
        self._log: collections.deque[Charge] = collections.deque()
        self._used = 0.0
        self._timed: list[Charge] = []  # entries with their own expiry (header corrections)
        self._expired: collections.deque[Charge] = collections.deque()  # recent expiries, see used_since
        self.pacer: Pacer | None = None  # smooth admission within the window (None: bursts of a window)

    @property
    def rate(self) -> float:
        """The window's steady rate, units per second (``limit / window_s``)."""
        return self.limit / self.window_s

    def _expire(self, now: float) -> None:
        while self._log and self._log[0].expires <= now:
            c = self._log.popleft()
            self._used -= c.amount
            self._expired.append(c)
        if self._timed:
            keep = [c for c in self._timed if c.expires > now]
            for c in self._timed:
                if c.expires <= now:
                    self._used -= c.amount
            self._timed = keep
        if not self._log and not self._timed:
            self._used = 0.0  # no float drift when empty
        while self._expired and self._expired[0].expires < now - self.window_s:
            self._expired.popleft()

    def used_since(self, since: float, now: float) -> float:
        """Units that were live at some time in ``[since, now]``, each at its largest amount
        then (before a refund): an upper bound on what a provider that answered in that
        interval can have counted from these charges."""
        return sum(c.peak_since(since) for c in self.live(now)) + sum(
            c.peak_since(since) for c in self._expired if c.expires > since)

    def live(self, now: float) -> list[Charge]:
        """The entries not yet expired at ``now`` (calls, corrections and assumed usage)."""
        self._expire(now)
        return [*self._log, *self._timed]

    def used(self, now: float) -> float:
        """Units charged in the window ending at ``now``."""
        self._expire(now)
        return self._used

    def used_by_calls(self, now: float) -> float:
        """:meth:`used` less the usage :meth:`prefill` assumed: what calls charged."""
        self._expire(now)
        return self._used - sum(c.amount for c in self._timed if c.assumed)

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds from ``now`` until ``amount`` more units fit (0.0 if they fit now): in the
        window and, with a :attr:`pacer`, in its bucket.

        An amount above the limit is admitted once the window is empty, so it
        cannot wait forever (it then blocks the window for a full period).
        """
        paced = self.pacer.wait_for(amount, self.rate, now) if self.pacer is not None else 0.0
        return max(paced, self._window_wait(amount, now))

    def _window_wait(self, amount: float, now: float) -> float:
        self._expire(now)
        need = min(float(amount), self.limit)
        if self._used + need <= self.limit + 1e-9:
            return 0.0
        # Walk the expiries in time order until enough has been freed.
        freed, excess = 0.0, self._used + need - self.limit
        for c in sorted([*self._log, *self._timed], key=lambda c: c.expires):
            freed += c.amount
            if freed >= excess - 1e-9:
                return max(0.0, c.expires - now)
        return 0.0  # only negative (refunded) amounts remain

    def charge(self, amount: float, now: float) -> Charge:
        """Charge ``amount`` at ``now`` (the caller checked :meth:`wait_for`); returns the entry."""
        self._expire(now)
        c = Charge(now, float(amount), now + self.window_s)
        self._log.append(c)
        self._used += c.amount
        if self.pacer is not None:
            self.pacer.take(c.amount, self.rate, now)
            c.paced = True
        return c

    def charge_until(self, amount: float, now: float, expires: float) -> Charge | None:
        """Charge ``amount`` that frees at ``expires`` instead of one window later; returns the
        entry (``None`` when nothing was charged: ``amount`` ≤ 0 or ``expires`` ≤ ``now``)."""
        self._expire(now)
        if amount > 0 and expires > now:
            c = Charge(now, float(amount), expires)
            self._timed.append(c)
            self._used += amount
            return c
        return None

    def extend(self, entry: Charge, expires: float, now: float) -> None:
        """Let a live entry charged with :meth:`charge_until` free at ``expires`` if that is later."""
        self._expire(now)
        if entry.expires > now and expires > entry.expires and entry in self._timed:
            entry.expires = expires

    def note_peak(self, entry: Charge, amount: float, now: float) -> None:
        """Record that the provider counted ``amount`` for a live entry at some time until
        ``now`` (more than the entry holds now): :meth:`used_since` bounds by it from then on."""
        if entry.expires > now and amount > entry.peak_since(entry.adjusted_at):
            entry.before, entry.adjusted_at = float(amount), now

    def adjust(self, entry: Charge, new_amount: float, now: float) -> None:
        """Change a live entry's amount (a settlement); an expired entry is left alone."""
        self._expire(now)
        if entry.expires > now:
            self._used += new_amount - entry.amount
            if self.pacer is not None and entry.paced:  # a refund refills the bucket, a correction drains it
                self.pacer.take(new_amount - entry.amount, self.rate, now)
            entry.before, entry.adjusted_at = entry.amount, now
            entry.amount = float(new_amount)

    def postpone(self, entry: Charge, seconds: float, now: float) -> None:
        """Expire a live entry ``seconds`` later (the provider counted the call late)."""
        self._expire(now)
        if seconds <= 0 or entry.expires <= now:
            return
        try:
            self._log.remove(entry)
        except ValueError:
            return
        entry.expires += seconds
        self._timed.append(entry)

    def resize(self, window_s: float, now: float) -> None:
        """Change the window's length, keeping what is charged: each live entry frees at the later
        of its own expiry and its charge time plus the new length (a change of configuration never
        frees capacity early); new charges free one new window after they are made.

        Raises:
            ValueError: ``window_s`` is not positive.
        """
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self._expire(now)
        if window_s < self.window_s:  # old entries now outlive newer ones: no longer in expiry order
            self._timed.extend(self._log)
            self._log.clear()
        else:
            for c in self._log:  # same order as before: every entry moves by the same rule
                c.expires = max(c.expires, c.t + window_s)
        self.window_s = float(window_s)

    def prefill(self, now: float, steps: int = 60) -> None:
        """Assume the window was used at exactly the limit, evenly, until ``now``.

        Used after the limiter's actor restarted (what was sent in the last minute
        is unknown): capacity then frees at the steady rate ``limit/window_s``
        instead of all at once, so a restart never causes a burst.
        """
        self._expire(now)
        if self.pacer is not None:
            self.pacer.empty(now)
        per = self.limit / steps
        for i in range(1, steps + 1):
            self._timed.append(Charge(now, per, now + self.window_s * i / steps, assumed=True))
            self._used += per


_DURATION = re.compile(r"(?P<n>\d+(?:\.\d+)?)(?P<u>ms|h|m|s)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | None) -> float | None:
    """Seconds in an OpenAI reset header value: ``"1s"``, ``"6m0s"``, ``"20ms"``, ``"0.5"``.

    Returns ``None`` when absent or unparsable.
    """
    if not text:
        return None
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = list(_DURATION.finditer(text))
    if not parts or "".join(p.group(0) for p in parts) != text:
        return None
    return sum(float(p.group("n")) * _UNIT_S[p.group("u")] for p in parts)


@dataclasses.dataclass(frozen=True)
class HeaderLimits:
    """What a response's ``x-ratelimit-*`` headers say about one dimension."""

    limit: int | None
    remaining: int | None
    reset_s: float | None


#: Header dimension (``x-ratelimit-limit-<dim>``) → the limiter's dimension.
HEADER_DIMENSIONS = {"requests": "requests", "tokens": "tokens", "input-tokens": "input_tokens",
                     "output-tokens": "output_tokens"}


def parse_rate_limit_headers(headers: Mapping[str, str] | None) -> dict[str, HeaderLimits]:
    """``{"requests": HeaderLimits, "tokens": HeaderLimits, ...}`` from OpenAI-named headers.

    Headers: ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (OpenAI API
    reference, "Rate limits"), and ``…-input-tokens`` / ``…-output-tokens`` (adapters of
    providers with separate input and output budgets name Anthropic's that way). Dimensions
    without a limit or remaining header are left out.
    """
    out: dict[str, HeaderLimits] = {}
    if not headers:
        return out
    lower = {k.lower(): v for k, v in headers.items()}

    def as_int(v: str | None) -> int | None:
        try:
            return int(float(v)) if v is not None else None
        except ValueError:
            return None

    for name, dim in HEADER_DIMENSIONS.items():
        limit = as_int(lower.get(f"x-ratelimit-limit-{name}"))
        remaining = as_int(lower.get(f"x-ratelimit-remaining-{name}"))
        if limit is None and remaining is None:
            continue
        reset = parse_duration(lower.get(f"x-ratelimit-reset-{name}"))
        out[dim] = HeaderLimits(limit, remaining, reset)
    return out

