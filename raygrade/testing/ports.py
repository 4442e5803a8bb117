"""Free loopback ports for test servers and benchmarks."""

from __future__ import annotations

import random
import socket

#: Where :func:`ports_for_another_process` looks: below Linux's default ephemeral range
#: (``net.ipv4.ip_local_port_range``, 32768–60999), from which every ``bind(0)`` and outgoing
#: connection takes its port, and above Ray's worker ports (``--min/max-worker-port``, 10002–19999).
HANDED_OUT_PORTS = (20000, 32767)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (another process may take it before you bind it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ports_for_another_process(n: int = 1, tries: int = 1000) -> list[int]:
    """``n`` distinct TCP ports free on every address now, for servers another process binds
    later (Ray's head and its agents, given their ports on ``ray start``'s command line).

    A port from :func:`free_port` comes from the ephemeral range, where the processes that start
    meanwhile take ports too: a Ray head's dashboard agent once found its port taken by one of
    Ray's own sockets and never registered, so no job could be submitted for the whole session.
    These come from :data:`HANDED_OUT_PORTS`, which nothing assigns by itself.

    Raises:
        RuntimeError: fewer than ``n`` free ports found in ``tries`` random picks.
    """
    found: list[int] = []
    for _ in range(tries):
        port = random.randint(*HANDED_OUT_PORTS)
        if port in found:
            continue
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == n:
            return found
    raise RuntimeError(f"fewer than {n} free ports in {HANDED_OUT_PORTS} after {tries} tries")
