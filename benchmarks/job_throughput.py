"""Durable-job throughput with an instant provider: how fast the HTTP API, the job store and
the Serve graph turn one large job into grades when the model is not the bottleneck.

Two jobs, each through ``POST /v1/jobs`` → store → batcher → graders → a fake
OpenAI-compatible server in its own process that answers at once (no latency, no limits):

- **text**: 1,000 typed students × 2 questions = 2,000 items;
- **image**: 400 students with one ≈ 90 KB handwriting-style page each (distinct files),
  2 questions, vision mode.

Per job: wall time from the POST to the terminal state, items/s (and students/s), the POST's
own time. Baseline measured in the same run: the same planned requests sent straight to the
same server by an ``AsyncOpenAI`` client at the same concurrency (what the provider alone
allows); the ratio raygrade ÷ direct says what the durable path costs. JSON under ``--out``.

Then **concurrent jobs** (the orchestration ceiling): ``--concurrent-jobs`` text jobs (20) of
``--concurrent-students`` students × 2 questions (50, so 100 items each), all POSTed at once;
items/s from the first POST until the last job is terminal (``--concurrent-rounds`` rounds, 3:
the median and the range), beside the same jobs' requests sent straight to the server (the
provider's own ceiling at the same concurrency).

Then **small jobs**: ``--small-jobs`` one-student jobs POSTed by ``--clients`` concurrent clients (32)
(a platform sending each student as it is scanned), once for a tenant without a quota, once
with a quota that never binds (every quota query runs), once with ``batch_across_jobs`` (jobs
share provider requests) and once as one-page image students (``--page``, each page distinct,
with the quota); POSTs/s, POST p50/p95, the wall time until all are graded and the
provider's prompt tokens per job, with the ratio quota ÷ none.

With ``--trace N`` the throughput phases are skipped: Serve's tracing is switched on (sampling
only requests that carry a ``traceparent``), N one-student text jobs are sent one at a time, each
with its own trace, and the time per hop (raygrade's spans and Serve's own, from the session's
span files) is printed: per job, how many spans of each name and their summed time (p50 over the
jobs), next to the job's end-to-end time from ``POST`` to its last grade.

``--store postgresql`` runs it on a PostgreSQL server started on 127.0.0.1 (Debian's package),
``--registry-replicas N`` sets the JobRegistry's replicas (the app's default: 1 on SQLite, whose
file has one writer; 2 on PostgreSQL).

Run: ``.venv/bin/python benchmarks/job_throughput.py`` (≈ 2 min on 2 cores);
``.venv/bin/python benchmarks/job_throughput.py --trace 30`` (≈ 1 min).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAYGRADE_FAKE_KEY", "sk-test")

from raygrade.config import ApiConfig, BatcherConfig, RateLimitConfig, RaygradeArgs, StoreConfig  # noqa: E402
from raygrade.protocol import GradingJob, ImagePage, Submission, TextPage  # noqa: E402
from raygrade.testing.fake_openai import FakeOpenAIProcess, fake_provider_config  # noqa: E402
from raygrade.testing.ports import free_port  # noqa: E402


def text_job(n: int, prefix: str = "t") -> GradingJob:
    from rate_limit import make_workload

    assessment, _ = make_workload(1)
    subs = [Submission(student_id=f"{prefix}{i:05d}", pages=[TextPage(
        text=f"Answer {i}: TCP uses a three-way handshake to agree on sequence numbers; UDP has none.")])
        for i in range(n)]
    return GradingJob(assessment=assessment, submissions=subs)


def image_job(n: int, page: str = "scan") -> GradingJob:
    """``n`` students, one distinct page each: ``scan`` = the ≈ 200 KB handwriting-style renders,
    ``small`` = a 600×400 blank PNG (≈ 2 KB; what the API tests send)."""
    import io

    from PIL import Image
    from rate_limit import make_workload
    from store import distinct_png

    assessment, subs = make_workload(n)
    if page == "small":
        buf = io.BytesIO()
        Image.new("RGB", (600, 400), "white").save(buf, format="PNG")
    subs = [s.model_copy(update={"pages": [ImagePage(data=base64.b64encode(distinct_png(
        buf.getvalue() if page == "small" else s.pages[0].image_bytes(), s.student_id)).decode())]})
        for s in subs]
    return GradingJob(assessment=assessment, submissions=subs)


def direct(args: RaygradeArgs, jobs: GradingJob | list[GradingJob], base_url: str, concurrency: int) -> dict:
    """The baseline: the planner's requests for ``jobs`` (each planned on its own, as raygrade
    plans them) straight to the server, ``concurrency`` at a time."""
    import openai
    from rate_limit import payload

    from raygrade.planner import planner_for
    from raygrade.prompts import StudentWork

    planner, bodies, items, students = planner_for(args), [], 0, 0
    for job in jobs if isinstance(jobs, list) else [jobs]:
        works = [StudentWork(student_id=s.student_id, alias=f"s{i + 1}", pages=list(s.pages), page_indices=[0],
                             question_ids=[q.id for q in job.questions_for(s)]) for i, s in enumerate(job.submissions)]
        vision = any(isinstance(p, ImagePage) for w in works for p in w.pages)
        bodies += [payload(b, False) for b in planner.batches("direct", job, works, vision)[0]]
        items += sum(len(w.question_ids) for w in works)
        students += len(works)

    async def main() -> float:
        sem = asyncio.Semaphore(concurrency)
        # Closed on this loop (left to the garbage collector, its connections were closed after
        # asyncio.run had closed the loop: "Event loop is closed" on stderr).
        async with openai.AsyncOpenAI(base_url=base_url, api_key="sk-test", max_retries=0) as client:
            async def one(p):
                async with sem:
                    await client.chat.completions.create(**p)

            t0 = time.perf_counter()
            await asyncio.gather(*(one(p) for p in bodies))
            return time.perf_counter() - t0

    wall = asyncio.run(main())
    return {"requests": len(bodies), "wall_s": wall, "items_per_s": items / wall, "students_per_s": students / wall}


def through_raygrade(url: str, job: GradingJob) -> dict:
    body = job.model_dump_json()
    with httpx.Client(timeout=600) as http:
        t0 = time.perf_counter()
        r = http.post(f"{url}/v1/jobs", content=body, headers={"content-type": "application/json"})
        r.raise_for_status()
        t_post = time.perf_counter() - t0
        jid = r.json()["id"]
        while True:
            st = http.get(f"{url}/v1/jobs/{jid}").json()
            if st["state"] in ("succeeded", "partial", "failed", "cancelled"):
                break
            time.sleep(0.05)
        wall = time.perf_counter() - t0
    p = st["progress"]
    return {"state": st["state"], "items": p["items_total"], "graded": p["items_graded"],
            "batches": p["batches_total"], "post_s": t_post, "wall_s": wall, "body_mb": len(body) / 1e6,
            "items_per_s": p["items_graded"] / wall, "students_per_s": p["students"] / wall}


async def _wait_terminal(http: httpx.AsyncClient, url: str, ids: list[str]) -> list[dict]:
    """Poll each job until it is terminal; returns their last status bodies, in ``ids`` order."""
    finals = []
    for jid in ids:
        while (st := (await http.get(f"{url}/v1/jobs/{jid}")).json())["state"] not in (
                "succeeded", "partial", "failed", "cancelled"):
            await asyncio.sleep(0.05)
        finals.append(st)
    return finals


def concurrent_jobs(url: str, jobs: list[GradingJob]) -> dict:
    """Every job of ``jobs`` POSTed at once; items/s from the first POST until the last job is
    terminal (a student's item counted when graded)."""
    bodies = [j.model_dump_json() for j in jobs]

    async def run() -> tuple[list[dict], float, float]:
        async with httpx.AsyncClient(timeout=120) as http:
            async def one(body: str) -> str:
                r = await http.post(f"{url}/v1/jobs", content=body, headers={"content-type": "application/json"})
                r.raise_for_status()
                return r.json()["id"]

            t0 = time.perf_counter()
            ids = await asyncio.gather(*(one(b) for b in bodies))
            posted = time.perf_counter() - t0
            finals = await _wait_terminal(http, url, list(ids))
            return finals, posted, time.perf_counter() - t0

    finals, posted, wall = asyncio.run(run())
    graded = sum(f["progress"]["items_graded"] for f in finals)
    return {"jobs": len(jobs), "items": sum(f["progress"]["items_total"] for f in finals), "graded": graded,
            "posts_s": posted, "wall_s": wall, "items_per_s": graded / wall,
            "succeeded": sum(f["state"] == "succeeded" for f in finals)}


def small_jobs(url: str, n: int, concurrency: int = 32, share: bool = False, image_page: str | None = None) -> dict:
    """``n`` one-student text jobs POSTed ``concurrency`` at a time (``share``: with
    ``options.batch_across_jobs``; ``image_page``: one-page image students instead, each page
    distinct, see :func:`image_job`); POST latency, the wall time until every job is terminal,
    and the provider's prompt tokens per job."""
    if image_page is not None:
        whole = image_job(n, image_page)
        bodies = [whole.model_copy(update={"submissions": [sub]}).model_dump_json() for sub in whole.submissions]
    else:
        job = text_job(1)
        if share:
            job = job.model_copy(update={"options": job.options.model_copy(update={"batch_across_jobs": True})})
        bodies = [job.model_dump_json()] * n

    async def run() -> tuple[list[float], list[str], float]:
        sem, lat, ids = asyncio.Semaphore(concurrency), [], []
        async with httpx.AsyncClient(timeout=120) as http:
            async def one(body: str):
                async with sem:
                    t = time.perf_counter()
                    r = await http.post(f"{url}/v1/jobs", content=body, headers={"content-type": "application/json"})
                    r.raise_for_status()
                    lat.append(time.perf_counter() - t)
                    ids.append(r.json()["id"])

            t0 = time.perf_counter()
            await asyncio.gather(*(one(body) for body in bodies))
            posted = time.perf_counter() - t0
            finals = await _wait_terminal(http, url, ids)
            return lat, finals, posted, time.perf_counter() - t0

    lat, finals, posted, wall = asyncio.run(run())
    lat.sort()
    return {"jobs": n, "posts_per_s": n / posted, "post_p50_ms": 1e3 * lat[len(lat) // 2],
            "post_p95_ms": 1e3 * lat[int(0.95 * (len(lat) - 1))], "wall_s": wall, "jobs_per_s": n / wall,
            "prompt_tokens_per_job": sum(f["usage"]["prompt_tokens"] for f in finals) / n,
            "succeeded": sum(f["state"] == "succeeded" for f in finals)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text-students", type=int, default=1000)
    ap.add_argument("--image-students", type=int, default=400)
    ap.add_argument("--page", choices=("scan", "small"), default="scan",
                    help="scan: ≈ 200 KB handwriting-style pages; small: 600×400 blank PNGs (≈ 2 KB)")
    ap.add_argument("--concurrent-jobs", type=int, default=20, help="text jobs POSTed at once (0: skip the phase)")
    ap.add_argument("--concurrent-rounds", type=int, default=3, help="rounds of the concurrent jobs (median)")
    ap.add_argument("--concurrent-students", type=int, default=50, help="students per concurrent job (2 items each)")
    ap.add_argument("--small-jobs", type=int, default=300, help="one-student jobs, without and with a quota")
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients POSTing the small jobs")
    ap.add_argument("--trace", type=int, nargs="?", const=30, default=0, metavar="N",
                    help="instead: N traced one-student jobs, one at a time, and the time per hop (default 30)")
    ap.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite",
                    help="the job store: SQLite (the default deployment) or a PostgreSQL server started on 127.0.0.1")
    ap.add_argument("--registry-replicas", type=int, default=None,
                    help="JobRegistry replicas (default: the app's: 1 on SQLite, 2 on PostgreSQL)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/out")
    a = ap.parse_args()
    if a.trace:
        a.text_students = a.image_students = a.small_jobs = a.concurrent_jobs = 0
    import ray
    from _trace_hops import trace_phase
    from ray import serve

    from raygrade.app import build_app

    srv, pg = FakeOpenAIProcess(), None
    report: dict = {"direct": {}, "raygrade": {}, "store": a.store, "registry_replicas": a.registry_replicas}
    try:  # the server processes and the cluster are stopped whatever happens
        home = Path(os.environ.setdefault("RAYGRADE_HOME", str(Path("/tmp") / f"rg-throughput-{uuid.uuid4().hex[:6]}")))
        store_url = f"sqlite:///{home}/jobs.db"
        if a.store == "postgresql":
            sys.path.insert(0, str(ROOT / "tests"))  # the tests' PostgreSQL helper (not in the wheel)
            from support.postgres import PostgresServer

            pg = PostgresServer().start()
            store_url = pg.create_database(f"tp_{uuid.uuid4().hex[:10]}")
        provider = fake_provider_config(srv.base_url, name="instant", rate_limit=RateLimitConfig(), max_retries=0)
        replicas = {"JobRegistry": {"num_replicas": a.registry_replicas}} if a.registry_replicas else {}
        args = RaygradeArgs(api=ApiConfig(auth="disabled", max_body_bytes=1 << 30),
                            provider=provider, batcher=BatcherConfig(),
                            store=StoreConfig(url=store_url),
                            namespace=f"rg-tp-{uuid.uuid4().hex[:6]}", deployment_options=replicas)
        print("building jobs ...", flush=True)
        jobs = {name: make(n) for name, n, make in (("text", a.text_students, text_job),
                                                     ("image", a.image_students, lambda n: image_job(n, a.page))) if n}
        for name, job in jobs.items():
            report["direct"][name] = direct(args, job, srv.base_url, args.batcher.max_concurrent_batches)
        many = [text_job(a.concurrent_students, f"c{j}-") for j in range(a.concurrent_jobs)]
        if many:  # the provider's ceiling for these jobs' requests, as many at once as in one job
            report["direct"]["concurrent"] = direct(args, many, srv.base_url, args.batcher.max_concurrent_batches)
        ray.init(address="local", include_dashboard=False, log_to_driver=False, namespace=args.namespace)
        port = free_port()
        # --trace: Serve's tracing on, with its default exporter (span files under the session's
        # logs), sampling only the requests that carry a sampled traceparent (the traced jobs).
        tracing = {"enabled": True, "sampling_ratio": 0.0} if a.trace else None
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False},
                    tracing_config=tracing)
        serve.run(build_app(args), name="tp", route_prefix="/tp")
        url = f"http://127.0.0.1:{port}/tp"
        through_raygrade(url, text_job(8))  # warm-up: replicas, tokenizer, connections
        if a.trace:
            report["trace"] = trace_phase(url, a.trace, text_job(1).model_dump_json())
        for name, job in jobs.items():
            report["raygrade"][name] = through_raygrade(url, job)
        if many:
            rounds = [concurrent_jobs(url, [text_job(a.concurrent_students, f"r{r}c{j}-")
                                            for j in range(a.concurrent_jobs)]) for r in range(a.concurrent_rounds)]
            rounds.sort(key=lambda x: x["items_per_s"])
            report["concurrent"] = {**rounds[len(rounds) // 2], "rounds": rounds}
        if a.small_jobs:
            from raygrade.protocol import TenantQuota
            from raygrade.store import JobStore

            report["small"] = {"no quota": small_jobs(url, a.small_jobs, a.clients)}
            store = JobStore(args.store.url)  # the operator's side: `raygrade quotas set default ...`
            store.set_quota("default", TenantQuota(max_active_jobs=10**6, items_per_day=10**9, tokens_per_day=10**12))
            store.close()
            report["small"]["quota"] = small_jobs(url, a.small_jobs, a.clients)
            report["small"]["batch_across_jobs"] = small_jobs(url, a.small_jobs, a.clients, share=True)
            report["small"][f"one {a.page} page"] = small_jobs(url, a.small_jobs, a.clients, image_page=a.page)
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        srv.stop()
        if pg is not None:
            pg.stop()
    if tr := report.get("trace"):
        print(f"\n{a.trace} one-student text jobs, one at a time: POST to terminal state "
              f"p50 {tr['job_p50_ms']:.1f} ms, p95 {tr['job_p95_ms']:.1f} ms")
        print("\n| hop (span) | spans per job | starts at ms (p50) | ms per job p50 | p95 |\n|---|---|---|---|---|")
        for r in tr["hops"]:
            print(f"| {r['hop']} | {r['spans_per_job']:.1f} | {r['start_ms']:.1f} | {r['p50_ms']:.2f} | "
                  f"{r['p95_ms']:.2f} |")
    if jobs:
        print("\n| job | raygrade wall s | raygrade items/s | students/s | POST s | direct items/s "
              "| raygrade ÷ direct |\n|---|---|---|---|---|---|---|")
    for name in jobs:
        r, d = report["raygrade"][name], report["direct"][name]
        print(f"| {name} ({r['items']} items, {r['batches']} requests, {r['body_mb']:.1f} MB) | {r['wall_s']:.2f} | "
              f"{r['items_per_s']:.0f} | {r['students_per_s']:.0f} | {r['post_s']:.2f} | {d['items_per_s']:.0f} | "
              f"{r['items_per_s'] / d['items_per_s']:.2f} |")
    if c := report.get("concurrent"):
        d = report["direct"]["concurrent"]
        span = "–".join(f"{r['items_per_s']:.0f}" for r in (c["rounds"][0], c["rounds"][-1]))
        print(f"\n| concurrent jobs (median of {len(c['rounds'])}) | items | POSTs s | wall s "
              f"| raygrade items/s (range) | direct items/s | raygrade ÷ direct | succeeded |\n"
              f"|---|---|---|---|---|---|---|---|\n| {c['jobs']} × {c['items'] // c['jobs']} items | {c['items']} "
              f"| {c['posts_s']:.2f} | {c['wall_s']:.2f} | {c['items_per_s']:.0f} ({span}) | {d['items_per_s']:.0f} "
              f"| {c['items_per_s'] / d['items_per_s']:.2f} | {c['succeeded']} |")
    if small := report.get("small"):
        print(f"\n| small jobs (1 student, {a.clients} concurrent POSTs) | POSTs/s | POST p50 ms | POST p95 ms "
              "| jobs/s to graded | prompt tokens per job | succeeded |")
        print("|---|---|---|---|---|---|---|")
        for name, r in small.items():
            print(f"| {name} ({r['jobs']}) | {r['posts_per_s']:.1f} | {r['post_p50_ms']:.0f} | "
                  f"{r['post_p95_ms']:.0f} | {r['jobs_per_s']:.1f} | {r['prompt_tokens_per_job']:.0f} | "
                  f"{r['succeeded']} |")
        q, n = small["quota"], small["no quota"]
        print(f"quota ÷ no quota: POSTs/s {q['posts_per_s'] / n['posts_per_s']:.2f}, "
              f"POST p50 {q['post_p50_ms'] / n['post_p50_ms']:.2f}, jobs/s {q['jobs_per_s'] / n['jobs_per_s']:.2f}")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "job_throughput.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
