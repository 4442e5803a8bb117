"""The rate limiter's per-key state: waiters, open charges, windows, learned counts per key.

:class:`~raygrade.ratelimit.limiter.RateLimiter` keeps one :class:`_KeyState` per (provider,
model) key: its sliding windows (:mod:`raygrade.ratelimit.window`), learned limits, circuit
breaker (:mod:`raygrade.ratelimit.breaker`), queue of waiters and statistics.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import math
import time
from typing import Any

from raygrade.config import RateLimitConfig
from raygrade.config.rate_limit import quota_zone
from raygrade.ratelimit.breaker import CircuitBreaker
from raygrade.ratelimit.daily import DailyQuota
from raygrade.ratelimit.offers import LimitOffers
from raygrade.ratelimit.pacer import Pacer
from raygrade.ratelimit.rules import DIMENSIONS, Charged, Rule
from raygrade.ratelimit.short import SHORT_BURST_SHARE, sync_short_windows
from raygrade.ratelimit.types import Clock, Reservation
from raygrade.ratelimit.window import Charge, SlidingWindow

#: Reservations not settled after this long are forgotten (checked once the map is large).
OPEN_RESERVATION_TTL_S = 3600.0
OPEN_RESERVATIONS_SOFT_CAP = 10_000

#: Settled calls needed before a learned count ratio below 1 shrinks reservations.
RATIO_MIN_SAMPLES = 3
#: EWMA weights of a new ratio sample: fast up (an under-estimate causes 429s), slow down.
RATIO_ALPHA_UP, RATIO_ALPHA_DOWN = 0.5, 0.1
#: Share added to a prompt's estimate scaled by a learned ratio while its call is in flight. The
#: ratio is an average and the provider counts each call up front: measured, a call charged at the
#: learned ratio was counted 2 tokens above its charge while a short window was full to the token,
#: and the provider rejected the next call. The excess is refunded when the call settles.
ESTIMATE_MARGIN = 0.005
#: Outside this band the estimates are off enough to warn about.
RATIO_WARN_BAND = (0.8, 1.25)
#: Readings in a row that show refunded rejections counted by the provider before it is believed.
REJECTION_RULE_EVIDENCE = 2

#: A learning probe that has not settled after this long stops holding back other calls.
PROBE_TIMEOUT_S = 15.0
#: Slow start applies while a call this many times its estimate could overflow the token window.
UNDER_ESTIMATE_GUARD = 4



@dataclasses.dataclass
class _Waiter:
    seq: int
    tokens: int
    rank: int
    job: str
    future: asyncio.Future
    enqueued: float
    prompt: int = 0
    images: int = 0
    tenant: str = ""
    output: int = 0  # the completion budget (max_tokens) within tokens
    patience: float | None = None  # longest wait for a spent daily quota (None: any)


@dataclasses.dataclass
class _Open:
    """An admitted call not yet settled: its reservation, when it was admitted and what it was
    charged in each of its key's rules."""

    reservation: Reservation
    admitted_at: float
    charged: tuple[Charged, ...] = ()

    def entry(self, dim: str) -> Charge | None:
        """The call's charge in its key's sliding window of ``dim`` (``None``: not charged there)."""
        return next((c.entry for c in self.charged if c.dimension == dim and isinstance(c.rule, SlidingWindow)),
                    None)


@dataclasses.dataclass
class Correction:
    """Usage the provider's ``x-ratelimit-remaining-*`` showed beyond this limiter's own charges,
    charged in the window (``charge``, freed at the header's reset): ``observed_at`` when that
    header was read, ``source_admitted`` when the call it came with was admitted."""

    charge: Charge
    observed_at: float
    source_admitted: float


class _KeyState:
    def __init__(self, key: str, limits: RateLimitConfig, now: float = 0.0, wall: Clock = time.time):
        self.key, self.limits = key, limits
        self.day = DailyQuota(limits.rpd, wall, quota_zone(limits.rpd_reset_zone))  # requests per day (Gemini's rule)
        self.offers = LimitOffers(key, limits, now)  # what each caller configured (RateLimiter.configure)
        self.scale = limits.window_s / 60.0  # per-minute limit -> per-window limit
        self.window_s = limits.window_s + limits.window_margin_s
        self.learned: dict[str, float] = {}  # per minute
        # Smooth admission's burst as learned from 429s that came while the windows had room
        # (learning.learn_burst), and when it was last lowered.
        self.learned_burst_s: float | None = None
        self.rate_scale = 1.0  # share of the windows' rate the pacers let out, learned once the burst is minimal
        self.burst_learned_at = float("-inf")
        self.req: SlidingWindow | None = None
        self.tok: SlidingWindow | None = None
        self.inp: SlidingWindow | None = None  # input tokens (itpm)
        self.out: SlidingWindow | None = None  # output tokens (otpm)
        # Short windows (raygrade.ratelimit.short): their period, configured or learned, and one
        # per dimension with a per-minute window.
        self.short_s = limits.short_window_s
        self.short: dict[str, SlidingWindow] = {}
        self.apply_limits(now)
        self.breaker = self._breaker(limits)
        self.waiters: list[_Waiter] = []
        # Start-time fair queueing in two levels: virtual times per (rank, tenant) and per
        # (rank, tenant, job); virtual clocks per (rank,) and per (rank, tenant).
        self.vtime: dict[tuple, float] = {}
        self.vclock: dict[tuple, float] = {}
        self.paused_until = 0.0
        self.corrections: dict[str, Correction] = {}  # per dimension, see learning.learn_from_headers
        # Rejected (429) calls of the last window, (admitted, settled), and whether the provider's
        # headers showed that it counts them although configured not to (learning.learn_rejection_rule).
        self.rejections: collections.deque[tuple[float, float]] = collections.deque(maxlen=4096)
        self.rejections_learned = False
        self.rejection_evidence = 0
        # Admitted, not yet settled: reservation id -> (admitted at, tokens, a learning probe).
        # A caller that dies never settles, so entries older than in_flight_timeout_s stop counting.
        self.in_flight: dict[int, tuple[float, int, bool]] = {}
        # The provider's prompt-token count ÷ the callers' estimates (EWMAs), for text and for
        # images apart, and their evidence (calls settled; calls with images).
        self.count_ratio = 1.0
        self.image_ratio = 1.0
        self.mixed_ratio = 1.0  # whole prompt, calls with images: a floor if text is miscounted too
        self.ratio_samples = 0
        self.image_samples = 0
        self.ratio_warned = False
        # Admission → sending of the latest 1,024 settled calls, (settled at, seconds); the snapshot
        # shows the largest in the window. And whether one past window_margin_s was logged.
        self.send_delays: collections.deque[tuple[float, float]] = collections.deque(maxlen=1024)
        self.delay_warned = False
        self.timer: asyncio.Task | None = None
        self.stats = {"admitted_requests": 0, "admitted_tokens": 0, "settled_tokens": 0, "rate_limited": 0,
                      "failures": 0, "rejected_open": 0, "header_corrections": 0, "burst_lowered": 0,
                      "quota_refused": 0, "short_window_learned": 0}

    def set_limits(self, limits: RateLimitConfig, now: float) -> None:
        """Put ``limits`` in force, keeping everything charged, queued, in flight and learned
        (a different window resizes the windows, see :meth:`SlidingWindow.resize`)."""
        old, self.limits = self.limits, limits
        self.day.limit = limits.rpd
        self.day.set_zone(quota_zone(limits.rpd_reset_zone))
        self.scale = limits.window_s / 60.0
        window_s = limits.window_s + limits.window_margin_s
        if window_s != self.window_s:
            self.window_s = window_s
            for w in self.windows():
                w.resize(window_s, now)
        if (old.breaker_failure_threshold, old.breaker_cooldown_s, old.breaker_max_cooldown_s) != (
                limits.breaker_failure_threshold, limits.breaker_cooldown_s, limits.breaker_max_cooldown_s):
            self.breaker = self._breaker(limits)
        if limits.short_window_s is not None:  # configured: in force (a learned one only if shorter)
            self.short_s = min(limits.short_window_s, self.short_s or limits.short_window_s)
        self.apply_limits(now)

    def counts_rejections(self) -> bool:
        """Whether a rejected call stays charged: configured so, or learned from the headers."""
        return self.limits.rejected_requests_count or self.rejections_learned

    @property
    def text_samples(self) -> int:
        """Settled calls without images: the evidence for the text ratio."""
        return self.ratio_samples - self.image_samples

    def learning(self, images: int = 0) -> bool:
        """Whether the provider's count for a call like this is still being learned (too few
        settled calls; for a call with images, too few with images)."""
        return self.ratio_samples < RATIO_MIN_SAMPLES or (images > 0 and self.image_samples < RATIO_MIN_SAMPLES)

    def concurrency_wait(self, now: float, tokens: int, prompt: int = 0, images: int = 0) -> float:
        """Seconds until a call of ``tokens`` fits the key's in-flight limits (0: it fits now).

        A settlement frees a slot at once (and pumps); the returned time is when the oldest
        blocking entry stops counting without one (its caller died).

        Until :data:`RATIO_MIN_SAMPLES` calls have taught the provider's prompt count, and while
        the token window is tight (:meth:`tight`), at most that many calls with a prompt
        estimate fly at once (a slow start), each for at most :data:`PROBE_TIMEOUT_S`: an
        estimate the provider counts far higher then costs a few rejected calls, not a
        window's worth.
        """
        lim = self.limits
        stale = now - lim.in_flight_timeout_s
        for rid in [rid for rid, (t, _, _) in self.in_flight.items() if t <= stale]:
            del self.in_flight[rid]
        waits = []
        if prompt and self.learning(images) and self.tight(now, tokens):
            probes = sorted(t for t, _, probe in self.in_flight.values() if probe and t > now - PROBE_TIMEOUT_S)
            if len(probes) >= RATIO_MIN_SAMPLES - (self.image_samples if images else self.ratio_samples):
                waits.append(probes[0] + PROBE_TIMEOUT_S - now)
        if self.in_flight:
            oldest = min(t for t, _, _ in self.in_flight.values()) + lim.in_flight_timeout_s - now
            if lim.max_concurrent_requests is not None and len(self.in_flight) >= lim.max_concurrent_requests:
                waits.append(oldest)
            if lim.max_concurrent_tokens is not None and \
                    sum(n for _, n, _ in self.in_flight.values()) + tokens > lim.max_concurrent_tokens:
                waits.append(oldest)
        return max(0.0, min(waits)) if waits else 0.0

    def tight(self, now: float, tokens: int) -> bool:
        """Whether an under-estimate could overflow the token window: the calls in it and this
        one at :data:`UNDER_ESTIMATE_GUARD` times their size would not fit (slow start only
        matters then; a key far below its limit is not held back). The window's own calls
        count at that size too: until the count is learned, they may be under-estimates as well
        (a first burst at 1× to a provider counting 4× fills its window four times faster).

        What a restarted limiter assumes was used (:meth:`SlidingWindow.prefill`) does not count:
        it is not an estimate of any call, and it already holds admissions to the steady rate.
        Counted, it made every key tight for most of a minute after a restart, so the first
        three calls were the only ones in flight, and when their caller died with them (a grader
        replica killed) every caller waited :data:`PROBE_TIMEOUT_S` (15-s stalls in the chaos test)."""
        return self.tok is not None and \
            (self.tok.used_by_calls(now) + tokens) * UNDER_ESTIMATE_GUARD > self.tok.limit

    def admit(self, reservation: Reservation, now: float) -> None:
        """Count a granted call in flight (as a learning probe when it carries a prompt estimate)."""
        probe = bool(reservation.prompt_estimate) and self.learning(reservation.image_estimate)
        self.in_flight[reservation.id] = (now, reservation.tokens, probe)

    def release(self, reservation: Reservation) -> None:
        """A reserved call ended (settled or forgotten): its in-flight slot and tokens are free."""
        self.in_flight.pop(reservation.id, None)

    def ratios(self) -> tuple[float, float, float]:
        """The (text, image, mixed) ratios reservations use: each the learned one once 3 calls
        back it, never below 1 before."""
        def r(value: float, samples: int) -> float:
            return value if samples >= RATIO_MIN_SAMPLES else max(1.0, value)

        return (r(self.count_ratio, self.text_samples), r(self.image_ratio, self.image_samples),
                r(self.mixed_ratio, self.image_samples))

    def scaled(self, tokens: int, prompt: int, images: int) -> int:
        """``tokens`` with its prompt part as the provider will count it: text × the text ratio,
        images × the image ratio (``images`` is part of ``prompt``); for a call with images at
        least prompt × the ratio learned on whole prompts with images, in case the provider
        miscounts their text too (the split then cannot tell text from images apart). A prompt
        scaled by a learned ratio gets :data:`ESTIMATE_MARGIN` on top, rounded up."""
        text_r, image_r, mixed_r = self.ratios()
        counted = (prompt - images) * text_r + images * image_r
        if images:
            counted = max(counted, prompt * mixed_r)
        if counted == prompt:
            return tokens
        return max(0, tokens + math.ceil(counted * (1.0 + ESTIMATE_MARGIN) - prompt))

    def snapshot(self, now: float) -> dict[str, Any]:
        """Effective limits, availability, queue, pause, learned counts, breaker and counters."""
        req, tok, inp, out = self.req, self.tok, self.inp, self.out
        return {
            "rpm": self.effective("requests"), "tpm": self.effective("tokens"),
            "itpm": self.effective("input_tokens"), "otpm": self.effective("output_tokens"),
            "requests_available": req.limit - req.used(now) if req else None,
            "tokens_available": tok.limit - tok.used(now) if tok else None,
            "input_tokens_available": inp.limit - inp.used(now) if inp else None,
            "output_tokens_available": out.limit - out.used(now) if out else None,
            # share of the window's limit in use (0–1), None without a limit
            "requests_utilisation": min(1.0, req.used(now) / req.limit) if req else None,
            "tokens_utilisation": min(1.0, tok.used(now) / tok.limit) if tok else None,
            "input_tokens_utilisation": min(1.0, inp.used(now) / inp.limit) if inp else None,
            "output_tokens_utilisation": min(1.0, out.used(now) / out.limit) if out else None,
            "waiting": len(self.waiters), "paused_for_s": max(0.0, self.paused_until - now),
            "in_flight_requests": len(self.in_flight),
            "in_flight_tokens": sum(n for _, n, _ in self.in_flight.values()),
            "count_ratio": self.count_ratio, "count_ratio_samples": self.ratio_samples,
            "image_count_ratio": self.image_ratio, "image_count_ratio_samples": self.image_samples,
            "mixed_count_ratio": self.mixed_ratio, "burst_s": self.burst_s(), "pace_rate_scale": self.rate_scale,
            "rejections_counted": self.counts_rejections(), "short_window_s": self.short_s if self.short else None,
            "max_send_delay_s": max((d for t, d in self.send_delays if t > now - self.window_s), default=None),
            "header_correction_tokens": sum(c.charge.amount for d, c in self.corrections.items()
                                            if d == "tokens" and c.charge.expires > now),
            "breaker": self.breaker.state, "breaker_opened": self.breaker.times_opened,
            **self.day.snapshot(), **self.stats,
        }

    @staticmethod
    def _breaker(limits: RateLimitConfig) -> CircuitBreaker:
        return CircuitBreaker(failure_threshold=limits.breaker_failure_threshold,
                              cooldown_s=limits.breaker_cooldown_s, max_cooldown_s=limits.breaker_max_cooldown_s)

    def window(self, dim: str) -> SlidingWindow | None:
        return getattr(self, DIMENSIONS[dim][0])

    def windows(self) -> list[SlidingWindow]:
        """The key's windows in use (a dimension without a limit has none)."""
        return [w for dim in DIMENSIONS if (w := self.window(dim)) is not None]

    def rules(self) -> list[tuple[str, Rule]]:
        """``(dimension, rule)`` for every rule the key enforces: its sliding windows, then its
        requests per day (a call is admitted when all of them let it, and charged in each)."""
        return [*((dim, w) for dim in DIMENSIONS if (w := self.window(dim)) is not None), *self.short.items(),
                ("requests", self.day)]

    def effective(self, dim: str) -> float | None:
        """The per-minute limit in force: the configured one, lowered by a learned one."""
        configured = getattr(self.limits, DIMENSIONS[dim][1])
        learned = self.learned.get(dim)
        if configured and learned:
            return min(configured, learned)
        return configured or learned

    def burst_s(self) -> float | None:
        """The smooth-admission burst in force: the configured one, at most a tenth of a short
        window, lowered by a learned one (``None``: off)."""
        cfg = self.limits.burst_s
        if cfg is not None and self.short_s is not None:  # see raygrade.ratelimit.short.SHORT_BURST_SHARE
            cfg = min(cfg, self.short_s * SHORT_BURST_SHARE)
        return None if cfg is None else min(cfg, self.learned_burst_s or cfg)

    def apply_limits(self, now: float) -> None:
        """Put the effective limits (configured, lowered by learned ones), the burst and the short
        windows in force; a window appears with its first limit and goes with its last."""
        burst = self.burst_s()
        for dim, (attr, _) in DIMENSIONS.items():
            eff, w = self.effective(dim), self.window(dim)
            if eff is None:
                w = None
            elif w is None:
                w = SlidingWindow(eff * self.scale, self.window_s)
            else:
                w.limit = float(eff * self.scale)
            if w is not None:
                w.pacer = None if burst is None else w.pacer or Pacer(burst)
                if w.pacer is not None and burst is not None:
                    w.pacer.burst_s, w.pacer.scale = burst, self.rate_scale
            setattr(self, attr, w)
        minute = {dim: w for dim in DIMENSIONS if (w := self.window(dim)) is not None}
        sync_short_windows(self.short, minute, self.short_s, self.limits.window_s, self.limits.window_margin_s, now)

