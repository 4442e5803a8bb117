"""What the rate limiter learns from the provider: its count of prompt tokens, and its headers.

- :func:`learn_count_ratio`: the ratio of the provider's reported prompt tokens to the
  callers' estimates, per key and apart for text and images (EWMAs: fast up, since an
  under-estimate brings 429s; slow down), which
  :meth:`~raygrade.ratelimit.limiter.RateLimiter.acquire` scales prompt reservations by.
- :func:`learn_from_headers`: lower limits and unseen usage from ``x-ratelimit-*`` headers
  (one :class:`~raygrade.ratelimit.state.Correction` per dimension, re-measured by fresher
  readings and shrunk by :func:`explain_correction`).
- :func:`learn_burst`: a smaller smooth-admission burst from 429s the windows do not explain.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from raygrade.ratelimit.pacer import MIN_BURST_S, MIN_RATE_SCALE
from raygrade.ratelimit.rules import DIMENSIONS
from raygrade.ratelimit.short import LEARNED_SHORT_WINDOW_S
from raygrade.ratelimit.state import (
    RATIO_ALPHA_DOWN,
    RATIO_ALPHA_UP,
    RATIO_MIN_SAMPLES,
    RATIO_WARN_BAND,
    REJECTION_RULE_EVIDENCE,
    Correction,
    _KeyState,
    _Open,
)
from raygrade.ratelimit.window import parse_rate_limit_headers

logger = logging.getLogger("raygrade.ratelimit.limiter")


def _ewma(value: float, sample: float, first: bool = False) -> float:
    """An EWMA fast up, slow down. A first sample above the prior is taken whole: the prior 1.0 is
    a guess, not a reading, and averaging with it left a provider counting 4× reserved at 2.5×
    after one call (under-estimates cost 429s; over-estimates still shrink slowly)."""
    if first and sample > value:
        return sample
    return value + (RATIO_ALPHA_UP if sample > value else RATIO_ALPHA_DOWN) * (sample - value)


def learn_count_ratio(st: _KeyState, reported: int, estimate: int, images: int = 0) -> None:
    """Fold one call into the key's ratios of the provider's prompt count to raygrade's estimate.

    A call without images teaches the text ratio (``reported / estimate``). A call with images
    teaches the image ratio from what the text part does not explain:
    ``(reported - (estimate - images) × text ratio) / images``, so a provider whose image
    rule differs from raygrade's (while its text count agrees) is learned as such, and text-only
    calls are not reserved as if they carried its images. Warns once per key when a ratio
    leaves :data:`RATIO_WARN_BAND`.
    """
    if images <= 0:
        st.count_ratio = _ewma(st.count_ratio, min(8.0, max(0.25, reported / estimate)), st.text_samples == 0)
    else:
        text = (estimate - images) * st.count_ratio
        first = st.image_samples == 0
        st.mixed_ratio = _ewma(st.mixed_ratio, min(8.0, max(0.25, reported / estimate)), first)
        st.image_ratio = _ewma(st.image_ratio, min(100.0, max(0.05, (reported - text) / images)), first)
        st.image_samples += 1
    st.ratio_samples += 1
    lo, hi = RATIO_WARN_BAND
    for what, ratio, n in (("prompt-token", st.count_ratio, st.text_samples),
                           ("image-token", st.image_ratio, st.image_samples)):
        if n >= RATIO_MIN_SAMPLES and not lo <= ratio <= hi and not st.ratio_warned:
            st.ratio_warned = True
            logger.warning("%s: the provider counts %.2fx raygrade's %s estimates; reservations follow its "
                           "count (check image_token_rule / tokenizer)", st.key, ratio, what)


def recharge_unlearned(st: _KeyState, opens: Mapping[int, _Open], now: float) -> None:
    """Calls admitted before the provider's count was known are charged at it as soon as it is
    (never less than their reservation): the window then holds what the provider counts for them
    while they are in flight, not their under-estimates."""
    if st.tok is None:
        return
    for rid, (_, _, probe) in list(st.in_flight.items()):
        o = opens.get(rid)
        if not probe or o is None or (tok := o.entry("tokens")) is None:
            continue
        r = o.reservation
        new = st.scaled(r.requested, r.prompt_estimate, r.image_estimate)
        if new > tok.amount:
            st.tok.adjust(tok, new, now)


def learn_from_headers(st: _KeyState, headers: Mapping[str, str], sent_at: float, now: float,
                       correct_tokens: bool = True) -> None:
    """Lower the key's limits to the provider's, and charge usage it saw but this limiter did not
    (``x-ratelimit-*``: ``remaining`` below what the windows say is left).

    One correction per dimension stands for the gap (:class:`Correction`): a reading that shows
    the provider further ahead raises it and holds it until the header's reset; a *fresher*
    reading (from a call admitted after the correction was made) replaces it, down to 0 when the
    gap has closed, so a transient gap (calls whose under-estimates settle, the provider's own
    refunds) does not hold capacity for a whole window. Settlements that explain the gap shrink it
    too (:func:`explain_correction`).

    The caller turns the *token* correction off (``correct_tokens``) while the provider's token
    count is still being learned: the gap is then this limiter's own under-estimates, which their
    settlements correct, and a correction on top would count them twice for a whole window.
    Requests are always corrected (a request is one request whatever the count)."""
    parsed = parse_rate_limit_headers(headers)
    changed = False
    for dim, h in parsed.items():
        # Headers speak in the provider's window; learned limits are kept per minute.
        if h.limit and st.learned.get(dim) != h.limit / st.scale:
            st.learned[dim] = h.limit / st.scale
            changed = True
    if changed:
        st.apply_limits(now)
    for dim, h in parsed.items():
        w = st.window(dim)
        # Input and output budgets learn their limits only: their remaining is rounded (Anthropic
        # rounds to the thousand) and output is settled after the reading, so a gap read there is
        # mostly noise that would hold capacity for a window.
        if w is None or h.remaining is None or dim not in ("requests", "tokens") or \
                (dim == "tokens" and not correct_tokens):
            continue
        corr = st.corrections.get(dim)
        live = corr if corr is not None and corr.charge.expires > now else None
        server_limit = h.limit or w.limit
        # What the provider says is left vs what this limiter can have spent meanwhile (its own
        # calls only: the standing correction is what is being re-measured).
        ours = w.used_since(sent_at, now) - (live.charge.peak_since(sent_at) if live else 0.0)
        theirs_left = h.remaining - max(0.0, server_limit - w.limit)
        missing = (w.limit - ours) - theirs_left
        if dim == "requests":
            learn_rejection_rule(st, missing, sent_at, now)
        until = now + min(st.window_s, h.reset_s if h.reset_s is not None else st.window_s)
        if live is None:
            if missing > 0.5 and (c := w.charge_until(missing, now, until)) is not None:
                st.corrections[dim] = Correction(c, now, sent_at)
                st.stats["header_corrections"] += 1
        elif missing > live.charge.amount + 0.5:  # further ahead: raise, hold until its reset
            w.adjust(live.charge, missing, now)
            w.extend(live.charge, until, now)
            live.observed_at, live.source_admitted = now, sent_at
            st.stats["header_corrections"] += 1
        elif sent_at >= live.observed_at:  # a fresher reading: the gap it shows is all there is
            w.adjust(live.charge, max(0.0, missing), now)
            live.observed_at, live.source_admitted = now, sent_at


def explain_correction(st: _KeyState, admitted_at: float, under_estimate: float, now: float) -> None:
    """A call admitted at ``admitted_at`` settled, and the provider had counted it
    ``under_estimate`` tokens above its reservation. If it was in flight when the standing token
    correction was read, that much of the gap was this call (now charged at the provider's
    count by its settlement): the correction shrinks by it."""
    corr = st.corrections.get("tokens")
    if st.tok is None or corr is None or under_estimate <= 0 or corr.charge.expires <= now:
        return
    if admitted_at <= corr.source_admitted:
        st.tok.adjust(corr.charge, max(0.0, corr.charge.amount - under_estimate), now)


def learn_rejection_rule(st: _KeyState, missing: float, sent_at: float, now: float) -> None:
    """Learn from ``x-ratelimit-remaining-requests`` that a provider configured as not counting
    rejected calls (``rejected_requests_count: false``: they are refunded) does count them.

    A reading from a call admitted after ``k`` ≥ 1 refunded rejections of the last window that
    shows at least ``k`` more requests than this limiter's own (``missing`` ≥ ``k``) is evidence;
    :data:`REJECTION_RULE_EVIDENCE` readings in a row switch the key to keeping rejected calls
    charged (logged once; ``rejections_counted`` in the snapshot); a reading without the gap
    resets the count. Only this direction is learned: this limiter's side of the comparison is an
    upper bound, so a provider that counts *fewer* requests is indistinguishable from timing, and
    mistaking other clients' use for counted rejections only costs the rare rejected call's slot.
    """
    while st.rejections and st.rejections[0][0] <= now - st.window_s:
        st.rejections.popleft()
    if st.counts_rejections():
        return
    k = sum(1 for _, settled in st.rejections if settled < sent_at)
    if k == 0:
        return
    if missing < k - 0.5:
        st.rejection_evidence = 0
        return
    st.rejection_evidence += 1
    if st.rejection_evidence >= REJECTION_RULE_EVIDENCE:
        st.rejections_learned = True
        logger.warning("%s: the provider's x-ratelimit-remaining-requests counts rejected (429) calls although "
                       "rate_limit.rejected_requests_count is false; rejected calls now stay charged", st.key)


#: Without the provider's word, a window filled below this share of its limit "had room" when a
#: call was rejected.
ROOM_SHARE = 0.9


def learn_burst(st: _KeyState, o: _Open, now: float, headers: Mapping[str, str] | None = None) -> bool:
    """Lower the key's smooth-admission burst after a 429 that the per-minute limits do not explain.

    When the provider rejects a call although its per-minute budget had room for it, it enforces
    its limit over periods shorter than the minute (OpenAI documents enforcing 60,000 RPM as
    1,000 per second). The first such rejection gives a key without one a short window of
    :data:`~raygrade.ratelimit.short.LEARNED_SHORT_WINDOW_S` (:mod:`raygrade.ratelimit.short`);
    each later one halves the burst (down to :data:`~raygrade.ratelimit.pacer.MIN_BURST_S`).
    Room, per dimension the call was charged in: the 429's ``x-ratelimit-remaining-*`` header
    covers the call (the provider's own count), else this limiter's window is below
    :data:`ROOM_SHARE` of its limit. Only a call admitted after the last lowering counts: the calls
    of one burst rejected together lower it once. With the burst at its floor, the pace itself is
    lowered instead, by 2 % a time down to :data:`~raygrade.ratelimit.pacer.MIN_RATE_SCALE` of the
    window's rate: calls paced at the full rate still arrive bunched (the grant's trip to a
    replica, the send), and a provider counting over a few seconds has no minute's margin for it.

    Returns:
        Whether a short window was added or the burst (or the pace) lowered.
    """
    burst = st.burst_s()
    if burst is None or o.admitted_at <= st.burst_learned_at or (
            burst <= MIN_BURST_S and st.rate_scale <= MIN_RATE_SCALE):
        return False
    said = parse_rate_limit_headers(headers)
    for dim in DIMENSIONS:
        w, c = st.window(dim), o.entry(dim)
        if w is None or c is None:
            continue
        h = said.get(dim)
        room = h.remaining >= c.amount if h is not None and h.remaining is not None else \
            w.used(now) < ROOM_SHARE * w.limit
        if not room:
            return False  # the minute was full: its own count explains the 429
    st.burst_learned_at = now
    if st.short_s is None:  # first: the provider's rule, as an exact window (raygrade.ratelimit.short)
        st.short_s = LEARNED_SHORT_WINDOW_S
        st.stats["short_window_learned"] += 1
        st.apply_limits(now)
        logger.warning("%s: the provider rejected a call while the minute had room (it enforces its limits over "
                       "shorter periods); now also admitting at most its pro rata share in any %.0f s "
                       "(rate_limit.short_window_s)", st.key, st.short_s)
        return True
    if burst > MIN_BURST_S:
        st.learned_burst_s = max(MIN_BURST_S, burst / 2)
    else:
        st.rate_scale = max(MIN_RATE_SCALE, st.rate_scale * 0.98)
    st.stats["burst_lowered"] += 1
    st.apply_limits(now)
    logger.warning("%s: the provider rejected a call while the window had room (it enforces its limit over shorter "
                   "periods); admitting at most %.2f s of the steady rate at once, at %.2f of it", st.key,
                   st.burst_s() or 0.0, st.rate_scale)
    return True
