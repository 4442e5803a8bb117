"""The rate limiter every caller shares: RPM/TPM per (provider, model) with priorities,
fair shares, header learning, global 429 backoff and a circuit breaker.

Plain asyncio with an injected clock and sleep, so it is unit-tested without Ray
or real time; :class:`raygrade.ratelimit.actor.RateLimiterActor` runs one instance
for the whole cluster.

Per key (``provider:model``):

- **Reserve, then settle.** A call reserves one request and its estimated tokens
  (prompt + ``max_tokens``, charged up front as hosted providers do) in every rule of its key
  (:mod:`~raygrade.ratelimit.rules`: a :class:`~raygrade.ratelimit.window.SlidingWindow` per
  per-minute limit, the day's requests); afterwards each rule settles to what the provider counted
  in its dimension and the unused part of ``max_tokens`` is refunded. A call
  that failed keeps its estimate (providers count failed calls too).
- **Queueing.** Waiters are admitted by one pump per key, strictly in order of
  priority class (``interactive`` before ``bulk``: bulk only gets what interactive
  leaves), then by start-time fair queueing between tenants of the same class and between
  each tenant's jobs (the tenant granted the fewest tokens goes first, then its job granted
  the fewest; Goyal et al., "Start-time Fair Queueing", SIGCOMM 1996), then FIFO. The head is never bypassed, so a large
  request is not starved by small ones.
- **Header learning.** ``x-ratelimit-limit-*`` lowers a configured limit that is
  above the provider's real one (or sets an unconfigured one); when
  ``x-ratelimit-remaining-*`` shows more usage than this limiter charged (another
  client of the same organisation, or a different token count), the difference is
  charged until the header's reset time.
- **Smooth admission.** Within each window a :class:`~raygrade.ratelimit.pacer.Pacer` lets
  out at most ``burst_s`` seconds' worth of the window's rate at once, then the steady rate.
- **429s.** A 429 pauses the key for every caller (``Retry-After``, else
  ``default_backoff_s``), not just the replica that got it; one that comes while the windows
  have room halves the burst (:func:`~raygrade.ratelimit.learning.learn_burst`).
- **Requests per day** (``rpd``, Gemini's rule; :mod:`~raygrade.ratelimit.daily`): counted per
  calendar day, and spent until its reset when the provider refuses a call for it. Nothing is sent
  on a spent day: a waiter whose ``patience_s`` reaches the reset waits for it, others are refused.
- **Circuit breaker** per key (:class:`~raygrade.ratelimit.breaker.CircuitBreaker`):
  while open, :meth:`RateLimiter.acquire` raises :class:`CircuitOpenError` at once.
- **Restart safety.** Built with ``restarted=True`` (the actor was reconstructed and
  lost its log) each window starts as if it had been used at the limit during the
  last window, so capacity comes back at the steady rate, never as a burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Mapping
from typing import Any

from raygrade.config import RateLimitConfig
from raygrade.errors import CircuitOpenError
from raygrade.ratelimit.daily import refuse_impatient
from raygrade.ratelimit.fair import head_waiter, join_share, serve_share
from raygrade.ratelimit.learning import (
    explain_correction,
    learn_burst,
    learn_count_ratio,
    learn_from_headers,
    recharge_unlearned,
)
from raygrade.ratelimit.rules import call_amounts, charge_all, settle_charges, settled_amounts, wait_all
from raygrade.ratelimit.state import (
    OPEN_RESERVATION_TTL_S,
    OPEN_RESERVATIONS_SOFT_CAP,
    _KeyState,
    _Open,
    _Waiter,
)
from raygrade.ratelimit.types import (  # noqa: F401  (Clock, Outcome, Priority, Reservation, Settlement, Sleep: public here too)
    PRIORITY_RANK,
    Clock,
    Outcome,
    Priority,
    Reservation,
    Settlement,
    Sleep,
)

logger = logging.getLogger(__name__)


class RateLimiter:
    """Shared RPM/TPM limiter for many keys; see the module docstring for the policy.

    Args:
        clock: Monotonic clock in seconds.
        sleep: Async sleep (``asyncio.sleep``; a fake in tests).
        restarted: The previous instance's state was lost (actor restart): start
            every key's windows as if used at the limit (no burst after a restart).
        wall: The wall clock, seconds since the epoch: where a calendar day starts (``rpd``).
    """

    def __init__(self, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep, *, restarted: bool = False,
                 wall: Clock = time.time):
        self._clock, self._sleep, self._wall = clock, sleep, wall
        self._restarted = restarted
        self._keys: dict[str, _KeyState] = {}
        self._ids = itertools.count(1)
        self._seq = itertools.count()
        self._open: dict[int, _Open] = {}

    # -- configuration --------------------------------------------------------------------
    def configure(self, key: str, limits: RateLimitConfig | Mapping[str, Any] | None = None, *,
                  rpm: int | None = None, tpm: int | None = None) -> None:
        """Offer the limits of ``key`` as one of its callers configured them.

        ``limits`` may be a :class:`~raygrade.config.RateLimitConfig` (its fields are the
        policy), its dict form, or omitted in favour of ``rpm``/``tpm``. Every caller of a key
        offers its own limits (each acquire through the actor carries them); the key keeps, field
        by field, the stricter of those offered within the last
        :data:`~raygrade.ratelimit.offers.OFFER_TTL_S` seconds
        (:class:`~raygrade.ratelimit.offers.LimitOffers`) and logs a warning when a caller offers limits that
        differ from the others'. So no caller loosens or resets another's limits; limits
        loosened by a redeploy take effect once the last caller of the old ones has been silent
        for that long. A change never loses what the key holds: charges, queue, calls
        in flight and learned counts stay (a different window resizes the windows).
        """
        if not isinstance(limits, RateLimitConfig):
            limits = RateLimitConfig.model_validate(limits) if limits is not None else RateLimitConfig(rpm=rpm, tpm=tpm)
        now = self._clock()
        st = self._keys.get(key)
        if st is None:
            st = self._keys[key] = _KeyState(key, limits, now, self._wall)
            if self._restarted:
                for _, rule in st.rules():
                    rule.prefill(now)
            return
        if (merged := st.offers.offer(limits, now)) is not None:
            st.set_limits(merged, now)
            self._pump(st)

    # -- acquire / settle -----------------------------------------------------------------
    async def acquire(self, key: str, tokens: int, *, priority: Priority = "interactive",
                      job: str | None = None, prompt_tokens: int | None = None,
                      image_tokens: int | None = None, tenant: str | None = None,
                      output_tokens: int | None = None, patience_s: float | None = None) -> Reservation:
        """Wait until ``key`` admits one request of ``tokens`` tokens, and reserve it.

        Args:
            key: A configured bucket key.
            tokens: Estimated tokens (prompt + ``max_tokens``), ≥ 0.
            priority: ``"interactive"`` (online jobs) or ``"bulk"`` (regrades).
            job: Fair-share group within its tenant (a job id); ``None`` shares one group.
            tenant: Fair-share group above jobs (the job's tenant): tenants share first, then
                each tenant's jobs share what it gets; ``None`` shares one tenant.
            prompt_tokens: The prompt part of ``tokens``. When given, it is scaled by the
                key's learned ratio of the provider's count to the estimates (see
                :meth:`settle`), so a provider that counts images 4× the estimate is reserved
                4×: reservations match what the provider will charge.
            output_tokens: The completion budget (``max_tokens``) within ``tokens``: charged to
                the output-tokens window (``otpm``), and the rest to the input-tokens window
                (``itpm``). ``None``: no output part (the whole of ``tokens`` is input).
            image_tokens: The images' part of ``prompt_tokens`` (their ratio is learned apart
                from the text's: a provider's image rule may differ while its text count agrees).
            patience_s: The longest this call waits for the key's spent daily quota to reset,
                seconds (``None``: however long).

        Raises:
            KeyError: ``key`` was never configured.
            ValueError: ``tokens`` < 0 or an unknown priority.
            CircuitOpenError: the key's breaker is open (now or while waiting).
            QuotaExhaustedError: the key's requests per day are spent until later than
                ``patience_s`` from now (now or while waiting).
        """
        st = self._keys[key]
        if tokens < 0:
            raise ValueError("tokens must be >= 0")
        if priority not in PRIORITY_RANK:
            raise ValueError(f"priority must be one of {sorted(PRIORITY_RANK)}")
        now = self._clock()
        if st.breaker.retry_in(now) > 0 and st.breaker.state == "open":
            st.stats["rejected_open"] += 1
            raise CircuitOpenError(f"circuit open for {key}", retry_after_s=st.breaker.retry_in(now))
        rank, group = PRIORITY_RANK[priority], job or ""
        join_share(st, rank, tenant or "", group)
        prompt = max(0, min(prompt_tokens or 0, tokens))  # scaled by the ratios in force when admitted
        w = _Waiter(next(self._seq), tokens, rank, group, asyncio.get_running_loop().create_future(), now, prompt,
                    max(0, min(image_tokens or 0, prompt)), tenant or "", max(0, min(output_tokens or 0, tokens)),
                    patience_s)
        st.waiters.append(w)
        self._pump(st)
        try:
            return await w.future
        except asyncio.CancelledError:
            if w in st.waiters:
                st.waiters.remove(w)
            elif w.future.done() and not w.future.cancelled() and w.future.exception() is None:
                # Admitted just as the caller gave up: nothing was sent, keep the charge honest.
                await self.settle(w.future.result(), Settlement(0, outcome="client_error"))
            self._pump(st)
            raise

    async def settle(self, reservation: Reservation, settlement: Settlement) -> None:
        """Report how a reserved call ended (:class:`~raygrade.ratelimit.types.Settlement`).

        An unknown or already-settled ``reservation`` still updates the key's headers, pause
        and breaker.
        """
        actual_tokens, outcome, retry_after_s = settlement.actual_tokens, settlement.outcome, settlement.retry_after_s
        headers, send_delay_s, prompt_tokens = settlement.headers, settlement.send_delay_s, settlement.prompt_tokens
        answer_s, grant_trip_s = settlement.answer_s, settlement.grant_trip_s
        st = self._keys.get(reservation.key)
        if st is None:
            return
        now = self._clock()
        o = self._open.pop(reservation.id, None)
        was_probe = st.in_flight.get(reservation.id, (0.0, 0, False))[2]  # admitted while the count was unknown
        if o is not None:
            st.release(o.reservation)
        bounds = [] if o is None else [now - o.admitted_at - answer_s] if answer_s is not None else []
        if o is not None and send_delay_s is not None and grant_trip_s is not None:
            bounds.append(send_delay_s + grant_trip_s)
        if bounds:  # the tightest upper bound on admission → sending; never below what was measured
            send_delay_s = max(send_delay_s or 0.0, min(bounds))
        if o is not None and send_delay_s and send_delay_s > 0:
            for c in o.charged:
                c.rule.postpone(c.entry, send_delay_s, now)
            st.send_delays.append((now, send_delay_s))
            if send_delay_s > st.limits.window_margin_s and not st.delay_warned:
                st.delay_warned = True
                logger.warning("key %s: a call left %.2f s after its admission, beyond window_margin_s (%.2f s): "
                               "calls admitted before it settled may reach the provider in one window; raise "
                               "window_margin_s", reservation.key, send_delay_s, st.limits.window_margin_s)
        if o is not None and outcome == "rate_limited":
            st.rejections.append((o.admitted_at, now))
            learn_burst(st, o, now, headers)
        counted = not (outcome == "rate_limited" and not st.counts_rejections())  # else: neither do we
        if o is not None:
            if actual_tokens is not None and counted:
                st.stats["settled_tokens"] += actual_tokens - o.reservation.tokens
            settle_charges(o.charged, settled_amounts(settlement, refund_unused=st.limits.refund_unused,
                                                      counted=counted), now)
        if outcome == "quota_exhausted":
            st.day.spend(settlement.quota_reset_at)
        if prompt_tokens and reservation.prompt_estimate and outcome == "ok":
            learn_count_ratio(st, prompt_tokens, reservation.prompt_estimate, reservation.image_estimate)
            recharge_unlearned(st, self._open, now)
            if o is not None and (tok := o.entry("tokens")) is not None and st.tok is not None:
                # What the provider charged when the call arrived (its prompt count + max_tokens): a
                # header read since may show it; once refunded, that is not usage anyone missed.
                charged = prompt_tokens + max(0, reservation.requested - reservation.prompt_estimate)
                st.tok.note_peak(tok, charged, now)
                explain_correction(st, o.admitted_at, charged - reservation.tokens, now)
        if headers and st.limits.learn_from_headers:
            # While calls admitted before the count was known are settling, the gap the headers show
            # is their under-estimates (corrected as they settle), not usage this limiter missed.
            unlearned = was_probe or any(probe for _, _, probe in st.in_flight.values())
            learn_from_headers(st, headers, o.admitted_at if o else now, now, correct_tokens=not unlearned)
        probe = reservation.probe
        if outcome == "failure":
            st.stats["failures"] += 1
            st.breaker.on_failure(now, probe)
            if st.breaker.state == "open":
                logger.warning("circuit breaker for %s opened for %.0fs", reservation.key,
                               st.breaker.current_cooldown_s)
        else:
            st.breaker.on_success(probe)
        if outcome == "rate_limited":
            st.stats["rate_limited"] += 1
            pause = retry_after_s if retry_after_s is not None else st.limits.default_backoff_s
            st.paused_until = max(st.paused_until, now + pause)
        self._pump(st)

    # -- the pump -------------------------------------------------------------------------
    def _pump(self, st: _KeyState) -> None:
        """Admit waiters while the head fits; otherwise arm one timer for when it will."""
        if st.timer is not None:
            st.timer.cancel()
            st.timer = None
        while st.waiters:
            now = self._clock()
            b = st.breaker
            if b.retry_in(now) > 0 and b.state == "open":
                err_wait = b.retry_in(now)
                for w in st.waiters:
                    if not w.future.done():
                        w.future.set_exception(CircuitOpenError("circuit opened while waiting",
                                                                retry_after_s=err_wait))
                st.stats["rejected_open"] += len(st.waiters)
                st.waiters.clear()
                return
            w = head_waiter(st)
            if w.future.done():  # cancelled by its caller
                st.waiters.remove(w)
                continue
            # The provider's count as learned so far, applied now: calls queued before the
            # ratio was known are not admitted at the old, smaller size.
            tokens = st.scaled(w.tokens, w.prompt, w.images) if w.prompt else w.tokens
            inp_tokens = max(0, tokens - w.output)  # the input part, as the provider will count it
            if (day_wait := st.day.wait()) > 0 and (n := refuse_impatient(st.day, st.key, st.waiters, day_wait)):
                st.stats["quota_refused"] += n
                continue
            amounts, rules = call_amounts(tokens, inp_tokens, w.output), st.rules()
            wait = max(b.retry_in(now), st.paused_until - now, st.concurrency_wait(now, tokens, w.prompt, w.images),
                       wait_all(rules, amounts, now))
            if wait > 0:
                st.timer = asyncio.get_running_loop().create_task(self._wake(st, wait))
                return
            st.waiters.remove(w)
            probe = b.on_admit(now)
            charged = charge_all(rules, amounts, now)
            serve_share(st, w, tokens)
            r = Reservation(next(self._ids), st.key, tokens, now - w.enqueued, probe, w.prompt, w.images, w.tokens)
            self._open[r.id] = _Open(r, now, charged)
            if len(self._open) > OPEN_RESERVATIONS_SOFT_CAP:
                self._expire_open(now)
            st.stats["admitted_requests"] += 1
            st.stats["admitted_tokens"] += tokens
            st.admit(r, now)
            w.future.set_result(r)

    def _expire_open(self, now: float) -> None:
        """Forget reservations never settled for an hour (their caller died): their charges
        have long left the windows; only the bookkeeping remains (and their in-flight slots)."""
        stale = [rid for rid, o in self._open.items() if o.admitted_at < now - OPEN_RESERVATION_TTL_S]
        for rid in stale:
            o = self._open.pop(rid)
            if (st := self._keys.get(o.reservation.key)) is not None:
                st.release(o.reservation)

    async def _wake(self, st: _KeyState, wait: float) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._sleep(wait)
            st.timer = None
            self._pump(st)

    # -- status ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per key: effective limits, availability, queue, pause, breaker and counters."""
        now = self._clock()
        return {key: st.snapshot(now) for key, st in self._keys.items()}
