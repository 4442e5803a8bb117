"""Peer systems the rate-limit benchmark runs beside raygrade (``benchmarks/rate_limit.py``):
LiteLLM's Router in worker processes of its own virtualenv (``_litellm_worker.py``)."""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def litellm_missing(a: argparse.Namespace) -> str | None:
    """Why the LiteLLM peer cannot run (its own virtualenv is missing), or ``None``."""
    if Path(a.litellm_python).exists():
        return None
    return (f"LiteLLM's python not found at {a.litellm_python}: create it with python -m venv "
            "benchmarks/out/litellm-venv && benchmarks/out/litellm-venv/bin/pip install litellm aiohttp, "
            "or leave litellm out of --systems")


def run_litellm(payload_file: Path, base_url: str, a: argparse.Namespace, *, rpm: int, tpm: int,
                model: str = "openai/fake-grader", delay_s: float = 0.0) -> dict:
    """``a.workers`` LiteLLM workers, each a Router with one deployment of ``model`` at ``base_url``
    carrying ``rpm``/``tpm``, sending its shard of ``payload_file`` (OpenAI-shaped chat bodies);
    stopped after ``a.max_wall_s``. Returns ``{failed_requests, errors, stopped}``."""
    tag = model.split("/", 1)[0]
    outs = [a.out / f"litellm-{tag}-{i}.json" for i in range(a.workers)]
    procs = [subprocess.Popen([a.litellm_python, str(ROOT / "benchmarks/_litellm_worker.py"), str(payload_file),
                               str(i), str(a.workers), base_url, str(rpm), str(tpm),
                               str(a.per_worker_concurrency), str(outs[i]), str(delay_s), model],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(a.workers)]
    deadline, stopped = time.monotonic() + a.max_wall_s, False
    for p in procs:
        try:
            p.wait(max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            stopped = True
    if stopped:
        return {"failed_requests": None, "stopped": True}
    errors: dict[str, int] = {}
    for o in (o for f in outs for o in json.loads(f.read_text())):
        if not o["ok"]:
            errors[o["error"]] = errors.get(o["error"], 0) + 1
    return {"failed_requests": sum(errors.values()), "errors": errors, "stopped": False}
