"""A fake provider in a child process, so a benchmark's clients and the server do not share one
interpreter: ``python -m <module> --port P --option value ...``, ready once it prints its banner,
its audit log read back over ``GET /_raygrade/log``."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import urllib.request
from typing import Any


class FakeProcess:
    """A fake server module run as ``python -m module`` on a free loopback port.

    Args:
        module: The module to run (it parses ``--port`` and one ``--flag`` per option).
        banner: The start of the first line it prints once it listens.
        record: The dataclass of its log's rows.
        **options: ``--option value`` each (``_`` as ``-``; a ``True`` flag given bare, ``False``
            and ``None`` left out).

    Raises:
        RuntimeError: the process did not print its banner.
    """

    def __init__(self, module: str, banner: str, record: type, **options: Any):
        from raygrade.testing.ports import free_port

        self.port, self._record = free_port(), record
        cmd = [sys.executable, "-m", module, "--port", str(self.port)]
        for k, v in options.items():
            flag = f"--{k.replace('_', '-')}"
            cmd += ([flag] if v else []) if isinstance(v, bool) else [] if v is None else [flag, str(v)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        if not (self.proc.stdout.readline() or "").startswith(banner):
            self.proc.kill()
            raise RuntimeError(f"{module} did not start")
        self.base_url = f"http://127.0.0.1:{self.port}"

    def log(self) -> list[Any]:
        """The server's audit log (rows of ``record``)."""
        names = {f.name for f in dataclasses.fields(self._record)}
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_raygrade/log", timeout=60) as r:
            return [self._record(**{k: v for k, v in row.items() if k in names}) for row in json.loads(r.read())["log"]]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
