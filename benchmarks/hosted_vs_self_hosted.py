"""Hosted vs self-hosted grading of the same page images, in one run.

The same job (SAF answers rendered as handwriting-style pages, with their human scores; or,
without SAF, the sample quiz shipped with raygrade) is planned once per system by the
product's planner and graded through the product's graders (``raygrade.graders``, each call
reserved in the cluster's rate limiter), in vision mode: page images go to the model.

- **hosted**: an OpenAI-compatible endpoint (``--hosted-url``, ``--hosted-model``,
  ``--hosted-key-env``, per-token prices). Without a URL: the project's fake server with the
  published figures of gpt-4o on OpenAI's tier 1 (500 RPM, 30,000 TPM, GPT-4o image tiles,
  ~0.5 s to the first token, ~100 output tokens/s, $2.50 / $10.00 per million tokens),
  labelled *simulated* in every output: its grades are schema-valid noise, its speed and cost
  are a model of the real service. (gpt-4o-mini is not the cheaper choice for pages: it bills
  each 512-px image tile as 5,667 tokens.)
- **self-hosted**: a model deployed with Ray's LLM serving library (``ray.serve.llm``), called
  through its Serve handle. The default is the tiny CPU vision model
  (:mod:`raygrade.engine.tiny_vlm`: proves the path, grades are noise); ``--preset gpu``
  serves a real VLM from ``--model-source`` on a GPU node (Qwen2.5-VL-7B-Instruct by default
  settings).

Per system: pages/s, seconds per student (p50/p95: a student's latency is that of the
request that carried it), vLLM's ``request_throughput`` and E2EL (``mean_e2el_ms``,
``p99_e2el_ms``; calls are not streamed, so TTFT/TPOT are not observable here), prompt and
completion tokens per page, cost per 1,000 pages (hosted: tokens × price, and the Batch API's
50 % price; self-hosted: ``--node-hour-usd`` × wall time), seconds waited in the rate limiter,
agreement with the human scores (QWK, exact) and between the two systems. One table on
stdout, JSON and (with matplotlib) a PNG under ``--out``.

CPU (here)::

    .venv/bin/python benchmarks/hosted_vs_self_hosted.py --students 12

GPU node with one H100/H200 and the CUDA vLLM (``pip install 'raygrade[gpu]'``)::

    python benchmarks/hosted_vs_self_hosted.py --preset gpu --model-source /models/Qwen2.5-VL-7B-Instruct \\
        --node-hour-usd 3.50 --students 120
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAYGRADE_FAKE_KEY", "sk-test")

from raygrade.batch import BatchOutcome, GradeBatch  # noqa: E402
from raygrade.config import BatcherConfig, ProviderConfig, RateLimitConfig, RaygradeArgs  # noqa: E402
from raygrade.protocol import GradingJob, JobOptions  # noqa: E402

#: gpt-4o on OpenAI's tier 1, from OpenAI's published rate limits and list prices (2025): the
#: simulated hosted endpoint's profile.
SIMULATED_HOSTED = {"model": "gpt-4o (simulated)", "rpm": 500, "tpm": 30_000, "latency_s": 0.5,
                    "latency_per_token_s": 1 / 100, "price_in": 2.50, "price_out": 10.00}


def load_job(a: argparse.Namespace) -> tuple[GradingJob, dict[tuple[str, str], float], str]:
    """The job, the human scores by (student, question), and what the data is."""
    from raygrade.datasets.saf import find_saf
    from raygrade.datasets.sample_jobs import saf_job, sample_job

    options = JobOptions(reading_mode="vision")
    root = find_saf(a.saf)
    if root is not None and not a.sample:
        per = max(1, a.students // a.questions)
        job, human = saf_job(root, questions=a.questions, per_question=per, examples=a.examples, options=options)
        return job, {(h.student_id, h.question_id): h.score for h in human}, f"SAF {len(job.submissions)} answers"
    job = sample_job(options)
    job = job.model_copy(update={"submissions": job.submissions[: a.students]})
    return job, {}, f"raygrade sample quiz, {len(job.submissions)} students (no human scores)"


def plan(job: GradingJob, args: RaygradeArgs, model_dir: str | None) -> tuple[list[GradeBatch], int]:
    """The product's plan for ``job`` under ``args``: batches, and students that fit no request."""
    from raygrade.planner import planner_for
    from raygrade.prompts import StudentWork

    works = [StudentWork(student_id=s.student_id, alias=f"s{i + 1}", pages=list(s.pages),
                         page_indices=list(range(len(s.pages))), question_ids=[q.id for q in job.questions_for(s)])
             for i, s in enumerate(job.submissions)]
    planner = planner_for(args, model_dir)
    batches, errors = planner.batches(f"bench-{uuid.uuid4().hex[:8]}", job, works, vision=True)
    return batches, len(errors)


async def grade_all(grader: Any, batches: list[GradeBatch], concurrency: int
                    ) -> list[tuple[GradeBatch, BatchOutcome, float]]:
    sem = asyncio.Semaphore(concurrency)

    async def one(b: GradeBatch) -> tuple[GradeBatch, BatchOutcome, float]:
        async with sem:
            t0 = time.monotonic()
            out = await grader.grade(b)
            return b, out, time.monotonic() - t0

    return list(await asyncio.gather(*(one(b) for b in batches)))


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def summarise(name: str, label: str, job: GradingJob, human: dict, runs: list, wall: float, unplanned: int,
              price_in: float, price_out: float, node_hour_usd: float | None) -> dict[str, Any]:
    """One system's figures (see the module docstring)."""
    from raygrade.evaluation import agreement

    pages = sum(len(s.pages) for s in job.submissions)
    per_student = [sec for b, _, sec in runs for _ in b.students]
    e2el = [sec for _, _, sec in runs]
    prompt = sum(o.usage.prompt_tokens for _, o, _ in runs)
    completion = sum(o.usage.completion_tokens for _, o, _ in runs)
    grades = {(r.student_id, r.question_id): r for _, o, _ in runs for r in o.results}
    items = sum(len(s.question_ids) for b, _, _ in runs for s in b.students)
    errors = sum(len(e.student_ids) * len(e.question_ids) for _, o, _ in runs for e in o.errors)
    pairs = [(human[k], g.score, g.max_score) for k, g in grades.items() if k in human]
    out: dict[str, Any] = {
        "system": name, "label": label, "students": len(job.submissions), "pages": pages, "requests": len(runs),
        "items": items, "graded": len(grades), "failed_items": errors, "unplanned_students": unplanned,
        "wall_s": wall, "pages_per_s": pages / wall if wall else None,
        "p50_s_per_student": _pct(per_student, 50), "p95_s_per_student": _pct(per_student, 95),
        "request_throughput": len(runs) / wall if wall else None,
        "mean_e2el_ms": statistics.fmean(e2el) * 1e3 if e2el else None, "p99_e2el_ms": _pct(e2el, 99) * 1e3,
        "prompt_tokens_per_page": prompt / pages if pages else None,
        "completion_tokens_per_page": completion / pages if pages else None,
        "limiter_wait_s": sum(o.limiter_wait_s for _, o, _ in runs),
        "grades": {f"{k[0]}|{k[1]}": g.score for k, g in grades.items()},
    }
    if node_hour_usd is None:
        usd = prompt / 1e6 * price_in + completion / 1e6 * price_out
        out["cost_per_1k_pages_usd"] = usd / pages * 1000 if pages else None
        out["cost_per_1k_pages_batch_api_usd"] = out["cost_per_1k_pages_usd"] * 0.5 if pages else None
    else:
        out["cost_per_1k_pages_usd"] = node_hour_usd * wall / 3600 / pages * 1000 if pages else None
        out["cost_per_1k_pages_batch_api_usd"] = None
    if pairs:
        ag = agreement(pairs)
        out["vs_human"] = {"n": ag.n, "qwk": ag.qwk, "exact": ag.exact}
    return out


def between(a: dict, b: dict) -> dict[str, Any] | None:
    """Agreement of two systems' grades on the items both graded (QWK on score levels)."""
    from raygrade.evaluation import agreement

    common = sorted(set(a["grades"]) & set(b["grades"]))
    if not common:
        return None
    top = max(max(a["grades"][k], b["grades"][k]) for k in common) or 1.0
    ag = agreement([(a["grades"][k], b["grades"][k], top) for k in common])
    return {"n": ag.n, "qwk": ag.qwk, "exact": ag.exact}


def self_hosted_model(a: argparse.Namespace) -> tuple[Any, ProviderConfig, str]:
    """The ServedModelConfig, its provider and model folder for ``--preset``."""
    from raygrade.selfhosted import ServedModelConfig

    if a.preset == "gpu":
        if not a.model_source:
            raise SystemExit("--preset gpu needs --model-source (a Qwen2.5-VL folder on this node)")
        model = ServedModelConfig(model_id="qwen2.5-vl", model_source=a.model_source, device="gpu",
                                  accelerator_type=a.accelerator_type, engine_kwargs={
                                      "max_model_len": 32768, "dtype": "bfloat16",
                                      "limit_mm_per_prompt": {"image": 16}})
        rule, window = "qwen2-vl", 32768
    else:
        from raygrade.engine.tiny_vlm import prepare_tiny_vlm

        source = a.model_source or str(prepare_tiny_vlm())
        model = ServedModelConfig(model_id="tiny-vlm", model_source=source, device="cpu", engine_kwargs={
            "max_model_len": 4096, "limit_mm_per_prompt": {"image": 4}})
        rule, window = "idefics3", 4096
    provider = ProviderConfig(name="self-hosted", kind="serve_llm", model=model.model_id, api_key_env=None,
                              supports_vision=True, image_token_rule=rule, tokenizer="hf",
                              tokenizer_path=model.model_source, context_window=window,
                              max_completion_tokens=min(4096, window // 4), schema_bounds=True,
                              feedback_max_chars=a.feedback_max_chars or (80 if a.preset == "cpu" else 200),
                              check_on_start=False, timeout_s=600)
    return model, provider, model.model_source


def print_table(report: dict) -> None:
    def f(v, fmt):
        return "—" if v is None else format(v, fmt)

    print(f"\n{report['data']}; {report['pages']} pages, vision mode\n")
    print("| system | pages/s | s/student p50, p95 | req/s | mean E2EL ms | prompt tok/page | completion tok/page | "
          "USD per 1k pages (batch API) | limiter wait s | QWK vs human | failed items |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in report["systems"]:
        qwk = f(s.get("vs_human", {}).get("qwk"), ".3f")
        batch = f" ({f(s['cost_per_1k_pages_batch_api_usd'], '.4f')})" if s["cost_per_1k_pages_batch_api_usd"] else ""
        print(f"| {s['label']} | {f(s['pages_per_s'], '.2f')} | {f(s['p50_s_per_student'], '.1f')}, "
              f"{f(s['p95_s_per_student'], '.1f')} | {f(s['request_throughput'], '.2f')} | "
              f"{f(s['mean_e2el_ms'], '.0f')} | {f(s['prompt_tokens_per_page'], '.0f')} | "
              f"{f(s['completion_tokens_per_page'], '.0f')} | {f(s['cost_per_1k_pages_usd'], '.4f')}{batch} | "
              f"{s['limiter_wait_s']:.1f} | {qwk} | {s['failed_items']} |")
    if report.get("between"):
        b = report["between"]
        print(f"\nbetween the systems: QWK {b['qwk']:.3f}, exact {b['exact']:.3f} on {b['n']} items")
    print("TTFT/TPOT: not observable (grading calls are not streamed; E2EL is the whole call)")


def plot(report: dict, path: Path) -> None:
    from raygrade._optional import has_module

    if not has_module("matplotlib"):
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = report["systems"]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, key, title in zip(axes, ("pages_per_s", "p95_s_per_student", "cost_per_1k_pages_usd"),
                              ("pages/s", "p95 s per student", "USD per 1,000 pages")):
        ax.bar([s["label"] for s in systems], [s[key] or 0 for s in systems], color=["#4c72b0", "#dd8452"])
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(report["data"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--students", type=int, default=12)
    ap.add_argument("--questions", type=int, default=4, help="SAF questions the students are spread over")
    ap.add_argument("--examples", type=int, default=0, help="graded examples per question in the prompt")
    ap.add_argument("--saf", help="SAF folder (default ../shared/data/saf)")
    ap.add_argument("--sample", action="store_true", help="the packaged sample quiz even when SAF is there")
    ap.add_argument("--hosted-url")
    ap.add_argument("--hosted-model", default="gpt-4o")
    ap.add_argument("--hosted-key-env", default="OPENAI_API_KEY")
    ap.add_argument("--hosted-image-rule", default="gpt-4o")
    ap.add_argument("--hosted-rpm", type=int)
    ap.add_argument("--hosted-tpm", type=int)
    ap.add_argument("--price-in", type=float, default=SIMULATED_HOSTED["price_in"], help="USD per 1M prompt tokens")
    ap.add_argument("--price-out", type=float, default=SIMULATED_HOSTED["price_out"])
    ap.add_argument("--preset", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--model-source")
    ap.add_argument("--accelerator-type")
    ap.add_argument("--node-hour-usd", type=float, default=0.10,
                    help="price of the self-hosted node per hour (CPU default: a 2-core VM; an H100 ≈ 3-4)")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight per system")
    ap.add_argument("--feedback-max-chars", type=int,
                    help="the self-hosted feedback bound (default: 80 on cpu, as the embedded model; 200 on gpu)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "hosted_vs_self_hosted")
    a = ap.parse_args(argv)

    import ray
    from ray import serve

    from raygrade.graders import cluster_grader
    from raygrade.testing.fake_openai import FakeOpenAIProcess, fake_provider_config

    job, human, data = load_job(a)
    a.out.mkdir(parents=True, exist_ok=True)
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    systems, srv = [], None
    try:
        if a.hosted_url:
            hosted = ProviderConfig(name="hosted", base_url=a.hosted_url, api_key_env=a.hosted_key_env,
                                    model=a.hosted_model, image_token_rule=a.hosted_image_rule,
                                    rate_limit=RateLimitConfig(rpm=a.hosted_rpm, tpm=a.hosted_tpm))
            hosted_label = f"hosted {a.hosted_model}"
        else:
            sim = SIMULATED_HOSTED
            srv = FakeOpenAIProcess(rpm=sim["rpm"], tpm=sim["tpm"], latency_s=sim["latency_s"],
                                    latency_per_token_s=sim["latency_per_token_s"])
            hosted = fake_provider_config(srv.base_url, name="hosted-sim", model=sim["model"],
                                          image_token_rule="gpt-4o", context_window=128_000,
                                          rate_limit=RateLimitConfig(rpm=sim["rpm"], tpm=sim["tpm"]))
            hosted_label = f"hosted {sim['model']}"
        batches, unplanned = plan(job, RaygradeArgs(provider=hosted, batcher=BatcherConfig(max_students_per_request=4)),
                                  None)
        grader = cluster_grader(hosted, namespace, priority="bulk")
        t0 = time.monotonic()
        runs = asyncio.run(grade_all(grader, batches, a.concurrency))
        systems.append(summarise("hosted", hosted_label, job, human, runs, time.monotonic() - t0, unplanned,
                                 a.price_in, a.price_out, None))
        print(json.dumps({k: v for k, v in systems[-1].items() if k != "grades"}), flush=True)

        model, provider, model_dir = self_hosted_model(a)
        serve.start(http_options={"host": "127.0.0.1", "port": 0}, logging_config={"enable_access_log": False})
        t_start = time.monotonic()
        handle = serve.run(model.deployment(), name="bench-model", route_prefix=None)
        startup_s = time.monotonic() - t_start
        args = RaygradeArgs(provider=provider, models=[model], batcher=BatcherConfig(max_students_per_request=2))
        batches, unplanned = plan(job, args, model_dir)
        grader = cluster_grader(provider, namespace, priority="bulk", model_handle=handle)
        t0 = time.monotonic()
        runs = asyncio.run(grade_all(grader, batches, a.concurrency))
        label = f"self-hosted {model.model_id} ({model.device})"
        systems.append(summarise("self_hosted", label, job, human, runs, time.monotonic() - t0, unplanned,
                                 0.0, 0.0, a.node_hour_usd))
        systems[-1]["startup_s"] = startup_s
        print(json.dumps({k: v for k, v in systems[-1].items() if k != "grades"}), flush=True)
    finally:
        if srv is not None:
            srv.stop()
        serve.shutdown()
        ray.shutdown()
    report = {"data": data, "pages": systems[0]["pages"], "simulated_hosted": not a.hosted_url,
              "config": {k: str(v) for k, v in vars(a).items()}, "systems": systems,
              "between": between(systems[0], systems[1])}
    print_table(report)
    (a.out / "hosted_vs_self_hosted.json").write_text(json.dumps(report, indent=2))
    plot(report, a.out / "hosted_vs_self_hosted.png")
    print(f"wrote {a.out / 'hosted_vs_self_hosted.json'}")
    return report


if __name__ == "__main__":
    main()
