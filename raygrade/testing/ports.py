"""Free loopback ports for test servers and benchmarks."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (another process may take it before you bind it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
