"""Run a command and take it down with its owner.

``python -m raygrade.engine.watchdog OWNER_PID -- CMD ...`` starts ``CMD`` in the
watchdog's own process group and, once a second, checks that ``OWNER_PID`` is
alive. When the owner is gone (e.g. its Ray actor was killed, which runs no
Python finalisers) or the watchdog gets SIGTERM, the whole group is stopped:
SIGTERM, then SIGKILL after a grace period. So the embedded vLLM server never
outlives the Serve replica that started it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

GRACE_S = 10.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_group(child: subprocess.Popen) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(0, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + GRACE_S
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(0, signal.SIGKILL)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m raygrade.engine.watchdog OWNER_PID -- CMD ...", file=sys.stderr)
        return 2
    owner = int(argv[0])
    child = subprocess.Popen(argv[2:])
    stop = False

    def on_term(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    while child.poll() is None:
        if stop or not _alive(owner):
            _stop_group(child)
            break
        time.sleep(1.0)
    return child.wait() if child.returncode is None else child.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
