"""Scans through the Files API against base64 pages in one JSON body, with an instant provider.

The same 400 one-page scanned students (the handwriting-style renders of ``job_throughput.py``'s
image job, ≈ 90–200 KB PNG each, two questions, vision mode) reach a raygrade app on a fake
OpenAI-compatible server that answers at once, three ways in one run:

- **base64 JSON** (the baseline, today's path): one ``POST /v1/jobs`` carrying every page inline;
- **400 PDFs**: one single-page PDF per student (what a scanner's "scan to PDF" writes),
  uploaded by ``--clients`` concurrent ``POST /v1/files``, then one job naming each file;
- **class PDF**: one 400-page PDF of the whole class, uploaded once, then one job whose student
  *k* is page *k*.

Per path: seconds to upload (and split into pages), seconds to accept the job (its POST), seconds
from the first byte sent to the last grade, and graded students/s over that whole time, with the
ratio to the base64 path; each path runs ``--repeats`` times, the paths taking turns, and its
median run is reported (one run on 2 cores varies by ±15 %). PDF pages are rendered by PDFium
at 150 dpi, so their pixel sizes (and image tokens) differ from the PNGs'. JSON under ``--out``.

Run: ``.venv/bin/python benchmarks/uploads.py`` (≈ 1.5 min on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import io
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

from job_throughput import image_job  # noqa: E402

from raygrade.config import ApiConfig, BatcherConfig, RateLimitConfig, RaygradeArgs, StoreConfig  # noqa: E402
from raygrade.protocol import GradingJob  # noqa: E402
from raygrade.testing.fake_openai import FakeOpenAIProcess, fake_provider_config  # noqa: E402
from raygrade.testing.ports import free_port  # noqa: E402


def pdf_of(pages: list[bytes], title: str) -> bytes:
    """A PDF of page images at 150 dpi (one page each), as a scanner writes; ``title`` makes the file distinct."""
    from PIL import Image

    ims = [Image.open(io.BytesIO(p)).convert("L") for p in pages]
    out = io.BytesIO()
    ims[0].save(out, format="PDF", save_all=True, append_images=ims[1:], resolution=150, title=title)
    return out.getvalue()


def wait_job(http: httpx.Client, url: str, body: bytes, t0: float) -> dict:
    """POST a job, poll it to its end: its POST seconds, seconds since ``t0``, graded students."""
    t_post = time.perf_counter()
    r = http.post(f"{url}/v1/jobs", content=body, headers={"content-type": "application/json"})
    r.raise_for_status()
    post_s = time.perf_counter() - t_post
    while (st := http.get(f"{url}/v1/jobs/{r.json()['id']}").json())["state"] not in (
            "succeeded", "partial", "failed", "cancelled"):
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    p = st["progress"]
    return {"state": st["state"], "post_s": post_s, "wall_s": wall, "graded_items": p["items_graded"],
            "students": p["students"], "students_per_s": p["students"] / wall, "body_mb": len(body) / 1e6}


def upload_all(url: str, files: list[tuple[str, bytes]], clients: int) -> list[dict]:
    """Upload ``files`` ``clients`` at a time; the file objects in order."""
    async def run() -> list[dict]:
        sem = asyncio.Semaphore(clients)
        async with httpx.AsyncClient(timeout=600) as http:
            async def one(name: str, data: bytes) -> dict:
                async with sem:
                    r = await http.post(f"{url}/v1/files", data={"purpose": "pages"},
                                        files={"file": (name, data, "application/pdf")})
                    r.raise_for_status()
                    return r.json()

            return await asyncio.gather(*(one(n, d) for n, d in files))

    return asyncio.run(run())


def skeleton(job: GradingJob) -> dict:
    """``job`` as JSON without its students' pages (built once, before any timing: a client
    naming uploaded files never holds the pages' base64)."""
    return json.loads(job.model_dump_json(exclude={"submissions": {"__all__": {"pages"}}}))


def with_pages(body: dict, pages: list[list[dict]]) -> bytes:
    """The job ``body`` (:func:`skeleton`) with student *i*'s pages ``pages[i]``, as JSON."""
    subs = [dict(sub, pages=p) for sub, p in zip(body["submissions"], pages, strict=True)]
    return json.dumps(dict(body, submissions=subs)).encode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--students", type=int, default=400)
    ap.add_argument("--clients", type=int, default=32, help="concurrent uploads of the single-student PDFs")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each path (the median is reported)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/out")
    a = ap.parse_args()
    import ray
    from ray import serve

    from raygrade.app import build_app

    print("building the pages and PDFs ...", flush=True)
    job = image_job(a.students)
    pngs = [s.pages[0].image_bytes() for s in job.submissions]
    single = [(f"{s.student_id}.pdf", pdf_of([p], s.student_id)) for s, p in zip(job.submissions, pngs, strict=True)]
    stack = pdf_of(pngs, "class")
    bare = skeleton(job)
    srv = FakeOpenAIProcess()
    runs: dict[str, list[dict]] = {"base64 JSON": [], "one PDF per student": [], "class PDF": []}
    try:  # the server process and the cluster are stopped whatever happens
        home = Path(os.environ.setdefault("RAYGRADE_HOME", f"/tmp/rg-uploads-{uuid.uuid4().hex[:6]}"))
        args = RaygradeArgs(api=ApiConfig(auth="disabled", max_body_bytes=1 << 30),
                            provider=fake_provider_config(srv.base_url, name="instant", rate_limit=RateLimitConfig(),
                                                          max_retries=0),
                            batcher=BatcherConfig(), store=StoreConfig(url=f"sqlite:///{home}/jobs.db"),
                            namespace=f"rg-up-{uuid.uuid4().hex[:6]}")
        ray.init(address="local", include_dashboard=False, log_to_driver=False, namespace=args.namespace)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
        serve.run(build_app(args), name="up", route_prefix="/up")
        url = f"http://127.0.0.1:{port}/up"
        with httpx.Client(timeout=900) as http:
            wait_job(http, url, image_job(4).model_dump_json().encode(), time.perf_counter())  # warm-up
            for rep in range(a.repeats):  # the paths take turns, so a slower spell of the machine hits each
                print(f"run {rep + 1} of {a.repeats}: base64 JSON ...", flush=True)
                inline = job.model_dump_json().encode()
                runs["base64 JSON"].append(dict(wait_job(http, url, inline, time.perf_counter()),
                                                upload_s=0.0, upload_mb=0.0))
                print("400 PDFs ...", flush=True)
                t0 = time.perf_counter()
                objs = upload_all(url, single, a.clients)
                up = time.perf_counter() - t0
                body = with_pages(bare, [[{"type": "file", "file_id": o["id"]}] for o in objs])
                runs["one PDF per student"].append(dict(wait_job(http, url, body, t0), upload_s=up,
                                                        upload_mb=sum(len(d) for _, d in single) / 1e6))
                print("class PDF ...", flush=True)
                t0 = time.perf_counter()
                obj = upload_all(url, [("class.pdf", stack)], 1)[0]
                up = time.perf_counter() - t0
                assert obj["pages"] == a.students, obj
                body = with_pages(bare, [[{"type": "file", "file_id": obj["id"], "page": k + 1}]
                                        for k in range(a.students)])
                runs["class PDF"].append(dict(wait_job(http, url, body, t0), upload_s=up, upload_mb=len(stack) / 1e6))
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        srv.stop()
    # Per path, the run with the median time from the first byte to the last grade, and the range.
    report = {name: dict(sorted(rs, key=lambda r: r["wall_s"])[len(rs) // 2], runs=rs) for name, rs in runs.items()}
    base = report["base64 JSON"]["students_per_s"]
    print(f"\n{a.students} one-page scanned students, 2 questions, instant provider; median of {a.repeats} runs "
          "per path (the paths taking turns), students/s range in brackets\n")
    print("| path | upload MB | upload + split s | job body MB | job POST s | first byte → last grade s "
          "| students/s graded | ÷ base64 |\n|---|---|---|---|---|---|---|---|")
    for name, r in report.items():
        rates = sorted(x["students_per_s"] for x in r["runs"])
        print(f"| {name} | {r['upload_mb']:.1f} | {r['upload_s']:.2f} | {r['body_mb']:.2f} | {r['post_s']:.2f} | "
              f"{r['wall_s']:.2f} | {r['students_per_s']:.0f} [{rates[0]:.0f}–{rates[-1]:.0f}] | "
              f"{r['students_per_s'] / base:.2f} |")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "uploads.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
