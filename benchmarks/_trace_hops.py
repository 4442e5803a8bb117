"""``benchmarks/job_throughput.py --trace N``: one-student jobs sent one at a time, each with its
own sampled trace, and the time per hop read back from Serve's span files."""

from __future__ import annotations

import time
from pathlib import Path

import httpx


def traced_jobs(url: str, n: int, body: str) -> list[tuple[str, float]]:
    """``n`` jobs of ``body`` (a one-student text job's JSON), one at a time, each POSTed with a
    sampled ``traceparent``; returns ``(trace id, seconds from POST to the job's terminal state)`` per job."""
    import secrets

    out = []
    with httpx.Client(timeout=60) as http:
        for _ in range(n):
            trace_id = secrets.token_hex(16)
            t0 = time.perf_counter()
            r = http.post(f"{url}/v1/jobs", content=body, headers={
                "content-type": "application/json", "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
            r.raise_for_status()
            while http.get(f"{url}/v1/jobs/{r.json()['id']}").json()["state"] in ("queued", "running"):
                time.sleep(0.002)
            out.append((trace_id, time.perf_counter() - t0))
    return out


def hop_table(spans: list[dict], traces: list[tuple[str, float]]) -> list[dict]:
    """Per span name over the traced jobs: spans per job, their summed milliseconds per job (p50
    and p95 over the jobs) and when the hop first starts after the job's first span (p50), in
    that order."""
    from datetime import datetime

    def t(iso: str) -> float:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()

    by_trace: dict[str, list[tuple[float, float, str]]] = {tid: [] for tid, _ in traces}
    for s in spans:
        tid = s["context"]["trace_id"].removeprefix("0x")
        if tid in by_trace:
            by_trace[tid].append((t(s["start_time"]), t(s["end_time"]), s["name"]))
    by_trace = {tid: sp for tid, sp in by_trace.items() if sp}
    sums: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, int]] = {}
    starts: dict[str, list[float]] = {}
    for tid, sp in by_trace.items():
        t0 = min(a for a, _, _ in sp)
        for a, b, name in sp:
            sums.setdefault(name, {})[tid] = sums.get(name, {}).get(tid, 0.0) + (b - a)
            counts.setdefault(name, {})[tid] = counts.get(name, {}).get(tid, 0) + 1
            starts.setdefault(name, []).append(a - t0)

    def pct(xs: list[float], q: float) -> float:
        xs = sorted(xs)
        return xs[int(q * (len(xs) - 1))]

    rows = []
    for name in sorted(starts, key=lambda n: pct(starts[n], 0.5)):
        ms = [1e3 * sums[name].get(tid, 0.0) for tid in by_trace]
        rows.append({"hop": name, "spans_per_job": sum(counts[name].values()) / len(by_trace),
                     "start_ms": 1e3 * pct(starts[name], 0.5), "p50_ms": pct(ms, 0.5), "p95_ms": pct(ms, 0.95)})
    return rows


def trace_phase(url: str, n: int, body: str) -> dict:
    """:func:`traced_jobs`, then their spans from the session's span files (waiting until each
    job's ``raygrade.job`` span is written, at most 30 s) through :func:`hop_table`."""
    import ray

    from raygrade.tracing import read_span_files

    traces = traced_jobs(url, n, body)
    folder = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve" / "spans"
    wanted, deadline = {f"0x{tid}" for tid, _ in traces}, time.monotonic() + 30
    while True:
        spans = [sp for sp in read_span_files(sorted(folder.glob("*.json"))) if sp["context"]["trace_id"] in wanted]
        done = {sp["context"]["trace_id"] for sp in spans if sp["name"] == "raygrade.job"}
        if done >= wanted or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    wall = sorted(1e3 * w for _, w in traces)
    return {"jobs": n, "job_p50_ms": wall[len(wall) // 2], "job_p95_ms": wall[int(0.95 * (len(wall) - 1))],
            "hops": hop_table(spans, traces)}
