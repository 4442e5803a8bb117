"""Bulk-regrade throughput: raygrade's Ray Data pipeline vs ``ray.data.llm``'s HTTP request
processor, same dataset, same OpenAI-compatible test server settings, one run.

The dataset is ``--students`` one-page handwriting-style answers (page images in Parquet,
raygrade's layout). Each system gets a fresh test-server process with the same latency
and RPM/TPM limits:

- **raygrade**: ``raygrade.bulk.run_regrade`` (actor pool of ``--workers``, students
  packed into token-budgeted requests by the online planner, bulk priority in the shared
  token bucket, Parquet results with error rows, staging + atomic rename).
- **ray.data.llm**: ``HttpRequestProcessorConfig`` (``concurrency=--workers``,
  ``batch_size`` 16, ``qps`` per actor = the RPM ÷ 60 ÷ workers, 3 retries): one request
  per submission with the same prompt and JSON schema (the processor does not pack),
  results written to Parquet.

Prints pages/s, wall time and requests per system and the ratio raygrade ÷ ray.data.llm;
writes ``--out``/bulk.json. Run: ``.venv/bin/python benchmarks/bulk.py`` (≈ 5 min).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAYGRADE_FAKE_KEY", "sk-test")

from _serving_metrics import serving_throughput  # noqa: E402  (benchmarks/, the script's own folder)

from raygrade.bulk import RegradeConfig, load_assessment, run_regrade  # noqa: E402
from raygrade.config import BatcherConfig, RateLimitConfig  # noqa: E402
from raygrade.datasets import write_dataset  # noqa: E402
from raygrade.prompts import StudentWork, build_messages, output_schema  # noqa: E402
from raygrade.protocol import Assessment, ImagePage  # noqa: E402
from raygrade.testing.fake_openai import FakeOpenAIProcess, fake_provider_config  # noqa: E402


def make_dataset(path: Path, n: int) -> Path:
    from raygrade.datasets.render import render_pages

    data = json.loads((ROOT / "raygrade/data/sample_assessment.json").read_text())
    assessment = Assessment(title=data["title"], questions=data["questions"][:1])
    qid = assessment.questions[0].id
    pages = [render_pages(f"Answer {i}: the three-way handshake synchronises both sequence numbers "
                          f"before any data is sent, so neither side accepts stale segments.", seed=i)[0]
             for i in range(16)]
    rows = [{"submission_id": f"s{i:05d}", "student_id": f"st{i}", "question_ids": [qid],
             "page_images": [pages[i % len(pages)]]} for i in range(n)]
    return write_dataset(path, assessment, rows, rows_per_file=128)


def request_for(row: dict, assessment: Assessment, max_tokens: int) -> dict:
    """The chat body for one submission with raygrade's prompt and schema (no packing)."""
    work = StudentWork(student_id=row["submission_id"], alias="s1",
                       pages=[ImagePage(data=base64.b64encode(p).decode()) for p in row["page_images"]],
                       page_indices=[0], question_ids=list(row["question_ids"]))
    return {"model": "fake-grader", "messages": build_messages(assessment.questions, [work]),
            "max_tokens": max_tokens, "temperature": 0.0,
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "grades", "schema": output_schema(assessment.questions, [work], bounds=False), "strict": True}}}


def run_ray_data_llm(dataset: Path, out: Path, base_url: str, a: argparse.Namespace) -> dict:
    import ray
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    assessment = load_assessment(str(dataset))
    max_tokens = 160 + 32  # raygrade's completion budget for one item + JSON overhead
    qps = max(1, int(a.rpm / 60 / a.workers))
    proc = build_processor(
        HttpRequestProcessorConfig(url=f"{base_url}/chat/completions", headers={"Authorization": "Bearer sk-test"},
                                   qps=qps, concurrency=a.workers, batch_size=16, max_retries=3),
        preprocess=lambda row: {"submission_id": row["submission_id"],
                                "payload": request_for(row, assessment, max_tokens)},
        postprocess=lambda row: {"submission_id": row["submission_id"],
                                 "content": ((row.get("http_response") or {}).get("choices") or [{}])[0]
                                 .get("message", {}).get("content")})
    ds = ray.data.read_parquet(str(dataset / "submissions")).repartition(a.workers * 4)
    proc(ds).write_parquet(str(out))
    return {"qps_per_actor": qps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--students", type=int, default=600)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rpm", type=int, default=3000)
    ap.add_argument("--tpm", type=int, default=5_000_000)
    ap.add_argument("--latency-s", type=float, default=0.5)
    ap.add_argument("--latency-per-token-s", type=float, default=0.004)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/bulk")
    a = ap.parse_args()
    import ray

    shutil.rmtree(a.out, ignore_errors=True)
    dataset = make_dataset(a.out / "dataset", a.students)
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    server_opts = dict(rpm=a.rpm, tpm=a.tpm, latency_s=a.latency_s, latency_per_token_s=a.latency_per_token_s)
    rows = {}
    for name in ("raygrade", "ray.data.llm"):
        srv = FakeOpenAIProcess(**server_opts)
        t0 = time.monotonic()
        extra: dict = {}
        if name == "raygrade":
            provider = fake_provider_config(srv.base_url, name="bulk-bench",
                                            rate_limit=RateLimitConfig(rpm=a.rpm, tpm=a.tpm))
            s = run_regrade(RegradeConfig(input=str(dataset), output=str(a.out / "raygrade"), provider=provider,
                                          batcher=BatcherConfig(max_students_per_request=8),
                                          namespace="bulk-bench", actors=a.workers, submissions_per_block=32))
            extra = {"failed_items": s.failed_items}
        else:
            extra = run_ray_data_llm(dataset, a.out / "ray_data_llm", srv.base_url, a)
        wall = time.monotonic() - t0
        log = srv.log()
        srv.stop()
        rows[name] = {"wall_s": wall, "pages": a.students, "pages_per_s": a.students / wall,
                      "requests": len(log), "rejected_429": sum(r.status == 429 for r in log),
                      **serving_throughput(log, wall), **extra}
        print(name, json.dumps(rows[name]), flush=True)
    ratio = rows["raygrade"]["pages_per_s"] / rows["ray.data.llm"]["pages_per_s"]
    print(f"\n{a.students} one-page submissions; server latency {a.latency_s}s + {a.latency_per_token_s}s/token, "
          f"RPM {a.rpm}, TPM {a.tpm}; {a.workers} workers each\n")
    print("| pipeline | pages/s | wall s | requests | 429s | request throughput req/s | output throughput tok/s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['pages_per_s']:.2f} | {r['wall_s']:.1f} | {r['requests']} | {r['rejected_429']} | "
              f"{r['request_throughput']:.2f} | {r['output_throughput']:.0f} |")
    print(f"\nraygrade ÷ ray.data.llm pages/s: {ratio:.2f}×")
    (a.out / "bulk.json").write_text(json.dumps({"config": {k: str(v) for k, v in vars(a).items()},
                                                 "systems": rows, "ratio_pages_per_s": ratio}, indent=2))


if __name__ == "__main__":
    main()
