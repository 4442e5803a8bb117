"""The store's state machines: jobs, batches, items. Each is defined once, here.

A transition not listed raises :class:`~raygrade.errors.IllegalTransitionError`
(HTTP 409 at the API). Job states are :class:`raygrade.protocol.JobState` (also the
API's); batch and item states are internal to the store.
"""

from __future__ import annotations

import enum

from raygrade.errors import IllegalTransitionError
from raygrade.protocol import JobState


class BatchState(str, enum.Enum):
    """A planned request: pending → leased → done; cancelled with its job."""

    PENDING = "pending"
    LEASED = "leased"
    DONE = "done"
    CANCELLED = "cancelled"


class ItemState(str, enum.Enum):
    """One student × question."""

    PENDING = "pending"
    GRADED = "graded"
    FAILED = "failed"
    CANCELLED = "cancelled"


J, B, It = JobState, BatchState, ItemState
JOB_TRANSITIONS: dict[str, set[str]] = {
    J.QUEUED: {J.RUNNING, J.CANCELLED, J.FAILED},
    J.RUNNING: {J.SUCCEEDED, J.PARTIAL, J.FAILED, J.CANCELLED},
    J.SUCCEEDED: set(), J.PARTIAL: set(), J.FAILED: set(), J.CANCELLED: set(),
}
BATCH_TRANSITIONS: dict[str, set[str]] = {
    B.PENDING: {B.LEASED, B.CANCELLED},
    B.LEASED: {B.DONE, B.PENDING, B.CANCELLED, B.LEASED},  # leased → leased: renewal / takeover after expiry
    B.DONE: set(), B.CANCELLED: set(),
}
ITEM_TRANSITIONS: dict[str, set[str]] = {
    It.PENDING: {It.GRADED, It.FAILED, It.CANCELLED},
    It.GRADED: set(), It.FAILED: set(), It.CANCELLED: set(),
}
del J, B, It


def check_transition(machine: dict[str, set[str]], kind: str, current: str, new: str) -> None:
    """Raise :class:`IllegalTransitionError` unless ``current → new`` is allowed in ``machine``."""
    if new not in machine.get(current, set()):
        raise IllegalTransitionError(f"{kind} cannot go from {_plain(current)!r} to {_plain(new)!r}", param="state")


def sources(machine: dict[str, set[str]], new: str) -> list[str]:
    """The states (as plain strings, for SQL) from which ``machine`` may go to ``new``."""
    return [_plain(s) for s, targets in machine.items() if new in targets]


def _plain(state: str) -> str:
    return state.value if isinstance(state, enum.Enum) else state
