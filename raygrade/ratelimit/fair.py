"""Start-time fair queueing of a key's waiters: priority classes, then tenants, then jobs.

Goyal et al., "Start-time Fair Queueing" (SIGCOMM 1996), applied per level as in hierarchical
SFQ (OSDI 1996): :func:`join_share` when a waiter queues, :func:`head_waiter` picks the next,
:func:`serve_share` accounts what it was granted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from raygrade.ratelimit.state import _KeyState, _Waiter


def join_share(st: _KeyState, rank: int, tenant: str, job: str) -> None:
    """A waiter of (``tenant``, ``job``) joins ``st``'s queue: a tenant, or a job within its
    tenant, that was not queued starts at its level's virtual clock (no credit for idle time)."""
    tk, jk = (rank, tenant), (rank, tenant, job)
    if not any(w.rank == rank and w.tenant == tenant for w in st.waiters):
        st.vtime[tk] = max(st.vtime.get(tk, 0.0), st.vclock.get((rank,), 0.0))
    if not any(w.rank == rank and w.tenant == tenant and w.job == job for w in st.waiters):
        st.vtime[jk] = max(st.vtime.get(jk, 0.0), st.vclock.get(tk, 0.0))


def head_waiter(st: _KeyState) -> _Waiter:
    """The next waiter: the best priority class, then the tenant granted the fewest tokens, then
    that tenant's job granted the fewest, then FIFO (Goyal et al., "Start-time Fair Queueing",
    SIGCOMM 1996, applied per level as in hierarchical SFQ, OSDI 1996)."""
    rank = min(w.rank for w in st.waiters)
    return min((w for w in st.waiters if w.rank == rank),
               key=lambda w: (st.vtime.get((w.rank, w.tenant), 0.0), st.vtime.get((w.rank, w.tenant, w.job), 0.0),
                              w.seq))


def serve_share(st: _KeyState, w: _Waiter, tokens: int) -> None:
    """Account ``tokens`` granted to ``w`` at both levels and advance the virtual clocks."""
    tk, jk = (w.rank, w.tenant), (w.rank, w.tenant, w.job)
    st.vclock[(w.rank,)] = st.vtime.get(tk, 0.0)
    st.vclock[tk] = st.vtime.get(jk, 0.0)
    st.vtime[tk] = st.vtime.get(tk, 0.0) + max(1, tokens)
    st.vtime[jk] = st.vtime.get(jk, 0.0) + max(1, tokens)
    if len(st.vtime) > 4096:  # forget what is not queued
        queued = {k for w2 in st.waiters for k in ((w2.rank, w2.tenant), (w2.rank, w2.tenant, w2.job))}
        st.vtime = {k: v for k, v in st.vtime.items() if k in queued}
