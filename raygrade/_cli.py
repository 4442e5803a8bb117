"""One way every raygrade command ends on a user's mistake: one line naming the problem, exit 2.

A missing input folder, an invalid config file, a provider that cannot work or an extra that
is not installed prints ``<prog>: error: <what>`` instead of a traceback (``RAYGRADE_DEBUG=1``
shows the traceback). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from raygrade.errors import RaygradeError


def one_line(exc: BaseException) -> str:
    """The exception as one line: pydantic's per-field errors joined, paths kept."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        errs = exc.errors()
        parts = [f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in errs[:3]]
        more = f" (and {len(errs) - 3} more)" if len(errs) > 3 else ""
        return f"invalid {exc.title}: " + "; ".join(parts) + more
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"no such file or folder: {exc.filename}"
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(text.split())


def run(main: Callable[[], int | None], prog: str) -> None:
    """Call ``main`` and exit with its status; user mistakes end in one line on stderr, exit 2."""
    try:
        rc = main()
    except KeyboardInterrupt:
        sys.exit(130)
    except (RaygradeError, OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        if os.environ.get("RAYGRADE_DEBUG"):
            raise
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    sys.exit(rc or 0)
