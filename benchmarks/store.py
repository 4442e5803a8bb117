"""Job-store benchmark: what each durable-job operation costs as jobs grow.

For jobs of 100, 1,000 and 10,000 students with one image page each (handwriting-style
PNGs of ≈ 90 KB as in ``benchmarks/rate_limit.py``, every page a distinct file; two questions,
two students per request), on SQLite and on PostgreSQL (a server the benchmark starts on
127.0.0.1 when Debian's ``postgresql`` package is installed), it times the calls the
Serve app makes on :class:`raygrade.store.JobStore`:

- ``create`` (the job and its items) and ``plan`` (``record_plan``: the batches);
- ``lease`` (``lease_batches`` of 16) and ``complete`` (``complete_batch``), the whole job
  driven through them as the batcher does;
- ``status`` (polled by clients and the batcher), 50 calls at three points of the job;
- ``results`` once at the end.

Per operation: calls per second and p50/p95 latency in ms, and the ratio of each p50 at
the largest job to the p50 at the smallest (flat cost per operation: ≈ 1). A markdown
table on stdout, JSON under ``--out``. ``--profile OP`` prints a cProfile of one
operation at the largest size.

Run: ``.venv/bin/python benchmarks/store.py`` (``--sizes 100,1000`` for a quick look).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from raygrade.batch import BatchOutcome  # noqa: E402
from raygrade.config import BatcherConfig, RaygradeArgs  # noqa: E402
from raygrade.protocol import GradeResult, GradingJob, Usage  # noqa: E402
from raygrade.store import JobStore  # noqa: E402
from raygrade.testing.fake_openai import fake_provider_config  # noqa: E402

OPS = ("create", "plan", "lease", "complete", "status", "results")


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def distinct_png(png: bytes, tag: str) -> bytes:
    """``png`` with a ``tEXt`` chunk holding ``tag`` after its header: the same picture, other
    bytes (every student's page is a distinct file, as in a real job, without rendering each)."""
    import struct
    import zlib

    data = b"raygrade\x00" + tag.encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    return png[:33] + chunk + png[33:]  # 8-byte signature + 25-byte IHDR chunk


def make_job(n: int) -> GradingJob:
    import base64

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from rate_limit import make_workload

    from raygrade.protocol import ImagePage

    assessment, subs = make_workload(n)
    subs = [s.model_copy(update={"pages": [ImagePage(data=base64.b64encode(distinct_png(
        s.pages[0].image_bytes(), s.student_id)).decode())]}) for s in subs]
    return GradingJob(assessment=assessment, submissions=subs)


def outcome_for(batch) -> BatchOutcome:
    """A grader's answer for ``batch``: every item graded 0.5."""
    results = [GradeResult(student_id=s.student_id, question_id=q.id, score=0.5 * q.max_score, batch_id=batch.batch_id,
                           max_score=q.max_score, feedback="Partly right.", confidence=0.8, pages=s.page_indices,
                           model="fake-grader", usage=Usage(prompt_tokens=10, completion_tokens=5))
               for s in batch.students for q in batch.questions if q.id in s.question_ids]
    return BatchOutcome(batch_id=batch.batch_id, results=results, errors=[],
                        usage=Usage(prompt_tokens=900, completion_tokens=120), calls=1)


def run_size(store: JobStore, planner, job: GradingJob, profile: str | None) -> dict[str, list[float]]:
    from raygrade.prompts import StudentWork

    t: dict[str, list[float]] = {op: [] for op in OPS}
    prof = cProfile.Profile() if profile else None

    def timed(op, fn, *a, **kw):
        if prof is not None and op == profile:
            prof.enable()
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        t[op].append(time.perf_counter() - t0)
        if prof is not None and op == profile:
            prof.disable()
        return out

    status, _ = timed("create", store.create_job, job, None, "bench")
    jid = status.id
    stored = store.get_job(jid)
    works = [StudentWork(student_id=s.student_id, alias=f"s{i + 1}", pages=list(s.pages),
                         page_indices=list(range(len(s.pages))), question_ids=[q.id for q in stored.questions_for(s)])
             for i, s in enumerate(stored.submissions)]
    batches, errors = planner.batches(jid, stored, works, True)
    timed("plan", store.record_plan, jid, batches, errors, "fake-grader")
    total, done = len(batches), 0
    checkpoints = {0, total // 2, total - 1}
    while True:
        leased = timed("lease", store.lease_batches, jid, "bench-owner", 60.0, 16)
        if not leased:
            break
        for b in leased:
            if done in checkpoints:
                for _ in range(50):
                    timed("status", store.status, jid)
            timed("complete", store.complete_batch, jid, outcome_for(b), "replica-1")
            done += 1
    final = store.finish_if_complete(jid)
    assert final is not None and final.state.value == "succeeded", final
    timed("results", store.results, jid)
    if prof is not None:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--profile", choices=OPS, help="cProfile this operation at the largest size")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/out")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    args = RaygradeArgs(provider=fake_provider_config("http://127.0.0.1:1/v1"),
                        batcher=BatcherConfig(max_students_per_request=2))
    from raygrade.planner import planner_for

    planner = planner_for(args)
    print(f"building jobs of {sizes} students ...", flush=True)
    jobs = {n: make_job(n) for n in sizes}
    rows = []
    pg = None
    try:  # the PostgreSQL server and the temporary folders go away whatever happens
        for backend in a.backends.split(","):
            if backend == "postgresql":
                sys.path.insert(0, str(ROOT / "tests"))  # the tests' PostgreSQL helper (not in the wheel)
                from support.postgres import PostgresServer, find_pg_bin

                if find_pg_bin() is None:
                    print("PostgreSQL not installed: skipping that back end (Debian: apt-get install postgresql)")
                    continue
                pg = PostgresServer().start()
            for n in sizes:
                tmp = tempfile.mkdtemp(prefix="rg-store-")
                url = f"sqlite:///{tmp}/jobs.db" if backend == "sqlite" else pg.create_database(
                    f"b_{uuid.uuid4().hex[:10]}")
                store = JobStore(url, blob_uri=f"{tmp}/blobs")
                try:
                    t = run_size(store, planner, jobs[n], a.profile if n == max(sizes) else None)
                finally:
                    store.close()
                    shutil.rmtree(tmp, ignore_errors=True)
                for op in OPS:
                    xs = t[op]
                    rows.append({"backend": backend, "students": n, "op": op, "calls": len(xs),
                                 "per_s": len(xs) / sum(xs), "p50_ms": statistics.median(xs) * 1e3,
                                 "p95_ms": percentile(xs, 95) * 1e3})
                print(f"{backend} {n}: " + ", ".join(f"{op} p50 {statistics.median(t[op]) * 1e3:.2f} ms"
                                                      for op in OPS), flush=True)
    finally:
        if pg is not None:
            pg.stop()
    lo, hi = min(sizes), max(sizes)
    print(f"\n| back end | students | op | calls | calls/s | p50 ms | p95 ms | p50 ÷ p50 at {lo} |")
    print("|---|---|---|---|---|---|---|---|")
    base = {(r["backend"], r["op"]): r["p50_ms"] for r in rows if r["students"] == lo}
    for r in rows:
        r["p50_over_smallest"] = r["p50_ms"] / base[(r["backend"], r["op"])]
        print(f"| {r['backend']} | {r['students']:,} | {r['op']} | {r['calls']} | {r['per_s']:,.0f} | "
              f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p50_over_smallest']:.2f} |")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "store.json").write_text(json.dumps({"sizes": sizes, "rows": rows}, indent=2))
    flat = [r for r in rows if r["students"] == hi and r["op"] in ("lease", "complete", "status")]
    print("\nper-call cost at the largest job ÷ the smallest (lease, complete, status): "
          + ", ".join(f"{r['backend']} {r['op']} {r['p50_over_smallest']:.2f}" for r in flat))


if __name__ == "__main__":
    main()
