"""What the fake server records of each request, and the audit of its windows."""

from __future__ import annotations

import dataclasses

#: Length of the rate-limit window, seconds.
WINDOW_S = 60.0
FAULTS = ("429", "500", "malformed", "out_of_range", "truncated", "refusal", "timeout", "reset")


@dataclasses.dataclass
class RequestRecord:
    """One request as the server saw it.

    Attributes:
        t: Wall-clock time it arrived (``time.time()``).
        status: HTTP status answered (0: none: the connection was reset, or held past the client's timeout).
        model: Requested model.
        charged_tokens: Input + ``max_tokens`` charged on admission (also set for a 429: what it asked for).
        prompt_tokens, completion_tokens: As reported in ``usage``.
        fault: The injected fault, if any.
        mono: ``time.monotonic()`` at admission (or rejection).
        final_tokens: What stays charged in the window once it completed (0 if rejected).
        items: ``"alias/question_id"`` for each item the structured-output schema asked
            for, on answered requests (the judge of which grades a provider produced).
    """

    t: float
    status: int
    model: str | None
    charged_tokens: int
    prompt_tokens: int
    completion_tokens: int
    fault: str | None
    mono: float = 0.0
    final_tokens: int = 0
    items: list[str] = dataclasses.field(default_factory=list)


def audit_windows(log: list[RequestRecord], window_s: float = WINDOW_S) -> dict[str, float]:
    """The busiest ``window_s`` window in a server log, from admitted requests' final charges.

    Returns:
        ``{"admitted", "rejected_429", "max_window_requests", "max_window_tokens"}``: the
        largest number of requests / tokens admitted in any window starting at an admission.
    """
    adm = sorted((r for r in log if r.final_tokens > 0 or r.status == 200), key=lambda r: r.mono)
    times = [r.mono for r in adm]
    max_req = max_tok = 0
    j, tok = 0, 0
    for i, r in enumerate(adm):  # two pointers over [times[i], times[i] + window_s)
        while j < len(adm) and times[j] < times[i] + window_s:
            tok += adm[j].final_tokens
            j += 1
        max_req, max_tok = max(max_req, j - i), max(max_tok, tok)
        tok -= r.final_tokens
    return {"admitted": len(adm), "rejected_429": sum(1 for r in log if r.status == 429),
            "max_window_requests": max_req, "max_window_tokens": max_tok}
