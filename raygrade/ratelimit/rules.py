"""The rules a limiter key enforces, behind one interface.

A provider limits one (provider, model) key by several rules at once: OpenAI by requests and
tokens per minute, Anthropic by requests, input tokens and output tokens per minute, Gemini by
requests per minute and per day. Each rule counts one *dimension* of a call (:data:`DIMENSIONS`:
``requests`` counts 1 a call, ``tokens`` its prompt + ``max_tokens``, ``input_tokens`` and
``output_tokens`` the two parts) and says how long until a call fits (:meth:`Rule.wait_for`).
The limiter admits a call when every rule of its key lets it (the longest wait wins), charges it in
every rule (:func:`charge_all`) and, when the call settles, gives each rule the amount the provider
counted in that rule's dimension (:func:`settled_amounts`).

Implementations:

- :class:`~raygrade.ratelimit.window.SlidingWindow`: at most a limit in any window (the
  per-minute RPM/TPM/ITPM/OTPM rules; also within the limit of a provider that refills a bucket
  continuously, see that module), with smooth admission inside it
  (:class:`~raygrade.ratelimit.pacer.Pacer`).
- :class:`~raygrade.ratelimit.daily.DailyQuota`: requests per calendar day in a time zone
  (Gemini's RPD).

A rule is a plain object on an injected clock; none needs Ray or real time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from raygrade.ratelimit.types import Settlement

#: The limiter's dimensions: (attribute of the key's window, field of the configured per-minute limit).
DIMENSIONS: dict[str, tuple[str, str]] = {"requests": ("req", "rpm"), "tokens": ("tok", "tpm"),
                                          "input_tokens": ("inp", "itpm"), "output_tokens": ("out", "otpm")}


@runtime_checkable
class Rule(Protocol):
    """One limit on one dimension of a key's calls.

    Amounts are in the dimension's unit (requests or tokens); ``now`` is the limiter's monotonic
    clock in seconds (a rule counted on the wall clock, such as a calendar day, reads its own).
    """

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds from ``now`` until ``amount`` more fits (0.0: now)."""
        ...

    def charge(self, amount: float, now: float) -> Any:
        """Count ``amount`` for a call admitted at ``now``; returns the entry that
        :meth:`adjust` and :meth:`postpone` take (``None`` when nothing was counted)."""
        ...

    def adjust(self, entry: Any, new_amount: float, now: float) -> None:
        """The provider counted ``new_amount`` for the call of ``entry`` (0: it did not count it)."""
        ...

    def postpone(self, entry: Any, seconds: float, now: float) -> None:
        """The call of ``entry`` reached the provider ``seconds`` after it was charged."""
        ...

    def prefill(self, now: float) -> None:
        """Nothing is known about what was sent just before ``now`` (the limiter restarted): assume
        the rule's budget was used, so capacity comes back at its steady rate."""
        ...


@dataclasses.dataclass(frozen=True)
class Charged:
    """What one admitted call was charged in one rule: its ``dimension``, the ``rule`` and the
    rule's ``entry``."""

    dimension: str
    rule: Rule
    entry: Any


def wait_all(rules: Iterable[tuple[str, Rule]], amounts: Mapping[str, float], now: float) -> float:
    """Seconds until a call of ``amounts`` (per dimension) fits every rule of ``rules``
    (``(dimension, rule)`` pairs); 0.0 when it fits now."""
    return max((rule.wait_for(amounts[dim], now) for dim, rule in rules), default=0.0)


def charge_all(rules: Iterable[tuple[str, Rule]], amounts: Mapping[str, float], now: float) -> tuple[Charged, ...]:
    """Charge a call of ``amounts`` (per dimension) in every rule of ``rules``, in their order."""
    return tuple(Charged(dim, rule, rule.charge(amounts[dim], now)) for dim, rule in rules)


def call_amounts(tokens: float, input_tokens: float, output_tokens: float) -> dict[str, float]:
    """What one call counts in each dimension: 1 request, ``tokens`` (prompt + ``max_tokens``,
    as the provider will count the prompt), the input part and the output part (``max_tokens``)."""
    return {"requests": 1, "tokens": tokens, "input_tokens": input_tokens, "output_tokens": output_tokens}


def settled_amounts(settlement: Settlement, *, refund_unused: bool, counted: bool) -> dict[str, float]:
    """What the provider counted for a settled call, per dimension; a dimension left out keeps its
    charge.

    Args:
        settlement: How the call ended, with the provider's usage when it answered.
        refund_unused: Give back the unused part of ``max_tokens`` (``rate_limit.refund_unused``):
            ``tokens`` becomes the usage's total and ``output_tokens`` its completion.
        counted: Whether the provider counted the call at all; ``False`` (a rejection it does not
            count) makes every dimension 0, requests and the day's count included.

    Input tokens are the usage's prompt less the cache reads (which do not count toward
    Anthropic's input tokens/min on current models), and are corrected whether or not unused
    output is refunded: they are what the provider counted, not a refund.
    """
    if not counted:
        return dict.fromkeys(DIMENSIONS, 0.0)
    out: dict[str, float] = {}
    total, completion = settlement.actual_tokens, settlement.completion_tokens
    if total is None:
        return out
    if refund_unused:
        out["tokens"] = total
    if completion is not None:
        if refund_unused:
            out["output_tokens"] = completion
        out["input_tokens"] = max(0, total - completion - settlement.cached_tokens)
    return out


def settle_charges(charges: Iterable[Charged], amounts: Mapping[str, float], now: float) -> None:
    """Adjust every charge whose dimension ``amounts`` names (:func:`settled_amounts`)."""
    for c in charges:
        if c.dimension in amounts:
            c.rule.adjust(c.entry, amounts[c.dimension], now)
