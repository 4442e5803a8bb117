"""Short windows: a per-minute limit that the provider also enforces pro rata over a few seconds.

OpenAI documents that a limit may be enforced over shorter periods than the minute (60,000 RPM
as 1,000 requests per second); Azure OpenAI checks its limits over 1- or 10-s windows. Such a
provider rejects calls that the minute window admits. The pacer (:mod:`raygrade.ratelimit.pacer`)
spreads admissions, but no bucket holds every P seconds to their share ``L_P`` and still comes
near it: a bucket of rate ``r`` admits up to ``r·P + s`` in P seconds (a call of size ``s`` may
leave it in debt), so it has to run at ``(L_P − s)/P``, and refunds credited to it let in tokens
that the provider's span never held (measured: 10 of 462 calls rejected, 0.91–0.94 of the TPM,
see docs/architecture.md).

A short window is the exact rule instead: a :class:`~raygrade.ratelimit.window.SlidingWindow` of
``limit·P/60`` over P seconds beside each per-minute one, charged, settled and postponed like
it (up front, refunded to the provider's count, moved by the call's send delay), so it admits
what such a provider counts, charge for charge. Its margin is the minute window's, scaled to its
length (``window_margin_s · P / window_s``: the same share of the window), but not below
:data:`SHORT_MARGIN_FLOOR_S` (nor above ``window_margin_s``).

It costs a provider that counts per minute only: any P seconds then hold at most ``P/60`` of the
minute's limit, and the part of a call that does not fit at each boundary is lost ``60/P`` times
as often as in the minute. So unless ``rate_limit.short_window_s`` configures it, a key has none until
a 429 comes while its minute windows had room (:func:`raygrade.ratelimit.learning.learn_burst`):
then one of :data:`LEARNED_SHORT_WINDOW_S` is added, holding what the minute windows charged in
its span. A key with a short window also admits smaller bursts (:data:`SHORT_BURST_SHARE`).
"""

from __future__ import annotations

from collections.abc import Mapping

from raygrade.ratelimit.window import SlidingWindow

#: With a short window of P seconds, at most ``P · SHORT_BURST_SHARE`` seconds' worth of the rate
#: is admitted at once. A burst comes back one window later (its charges leave together and free
#: room together), and its calls reach the provider bunched, each counted a little later than it
#: left: measured at the start of a run, 18 calls let out at once were counted over 0.17 s (the
#: short window's whole margin) and two calls of the next window were rejected.
SHORT_BURST_SHARE = 0.1

#: The least margin of a short window, in seconds (unless ``window_margin_s`` is less). A call
#: is counted by the provider a little after it leaves, and that delay does not shrink with the
#: window: measured against the fake provider at the start of a run (fresh connections, busy
#: server), calls were counted more than 0.17 s (10 s scaled from a 1-s minute margin) after the
#: limiter let them out, and one call of the next window was rejected.
SHORT_MARGIN_FLOOR_S = 0.25

#: The period a key learns from a rejection its minute windows do not explain (Azure OpenAI's
#: 10-s windows; a provider enforcing over 1 s is met by the pacer learning its burst down).
LEARNED_SHORT_WINDOW_S = 10.0


def short_length(period_s: float, window_s: float, margin_s: float) -> float:
    """Length in seconds of a short window of ``period_s`` beside a minute window of ``window_s``
    with a margin of ``margin_s``: ``period_s`` plus its margin, ``margin_s · period_s /
    window_s`` but at least :data:`SHORT_MARGIN_FLOOR_S` and at most ``margin_s``."""
    return period_s + min(margin_s, max(margin_s * period_s / window_s, SHORT_MARGIN_FLOOR_S))


def sync_short_windows(short: dict[str, SlidingWindow], minute: Mapping[str, SlidingWindow],
                       period_s: float | None, window_s: float, margin_s: float, now: float) -> None:
    """Make ``short`` (dimension → short window, changed in place) match the key's per-minute
    windows ``minute`` (dimension → window of the provider's ``window_s``): one of ``period_s``
    per dimension, its limit ``minute.limit · period_s / window_s``; none when ``period_s`` is
    ``None`` or the period is not shorter than the window.

    A new short window starts holding what its minute window charged in its span (:func:`seed`);
    an existing one keeps its charges (a new length resizes it, see
    :meth:`~raygrade.ratelimit.window.SlidingWindow.resize`).
    """
    if period_s is None or period_s >= window_s:
        short.clear()
        return
    length = short_length(period_s, window_s, margin_s)
    for dim in [d for d in short if d not in minute]:
        del short[dim]
    for dim, w in minute.items():
        limit = w.limit * period_s / window_s
        if (s := short.get(dim)) is None:
            short[dim] = s = SlidingWindow(limit, length)
            seed(s, w, now)
        else:
            s.limit = limit
            if s.window_s != length:
                s.resize(length, now)


def seed(short: SlidingWindow, minute: SlidingWindow, now: float) -> None:
    """Charge ``short`` with what ``minute`` holds from the last ``short.window_s`` seconds, each
    entry freeing as long after its charge as the short window is long (a postponed entry keeps
    its postponement)."""
    for c in minute.live(now):
        short.charge_until(c.amount, now, c.expires - minute.window_s + short.window_s)
