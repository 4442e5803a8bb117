"""Regrade an archive with Ray Data: ``ray job submit --working-dir . -- python jobs/regrade.py IN OUT``.

``IN`` is a dataset folder in raygrade's Parquet layout (see ``raygrade/bulk/__init__.py``;
``python -m raygrade.datasets`` writes one from SAF or from online jobs); ``OUT`` gets
``results/`` (one row per submission and question), ``report.json``/``report.md`` and
``confusion.png``. Re-running with the same ``OUT`` resumes: graded submissions are skipped.

The provider comes from ``--serve-config`` (the online app's ``serve_config.yaml``: same
provider, same token-bucket namespace, so the regrade shares the online rate budget at
bulk priority), from ``--provider`` (a YAML/JSON ``ProviderConfig``), or is the app's
default (OpenAI with ``OPENAI_API_KEY``, else the embedded model). A model served in a Serve
application (``serve_llm``, or the embedded default) is graded through its deployment: the
online app's when ``--serve-config``'s application runs on this cluster, else one this run
deploys on the cluster for its duration (Ray's LLM serving library; vLLM on the model nodes).
``--baseline`` grades with the zero-cost reference-similarity grader. ``--mode batch-api``
sends the same requests through the provider's batch API (OpenAI's Batch API, Anthropic's
Message Batches, Gemini's batch mode: half the price, within 24 h; see ``raygrade/bulk/batch_api.py``): re-running
with the same ``OUT`` resumes without submitting anything twice, and ``ray job stop`` cancels
the open batches.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raygrade.bulk import RegradeConfig, load_assessment, run_regrade  # noqa: E402
from raygrade.bulk.config import BatchApiConfig  # noqa: E402
from raygrade.config import ProviderConfig, RaygradeArgs, reference_similarity_provider  # noqa: E402
from raygrade.errors import ConfigError  # noqa: E402
from raygrade.serve.models import provider_model  # noqa: E402
from raygrade.settings import resolve_args  # noqa: E402


def _load(path: str) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text())


def _serve_runs_here() -> bool:
    """Whether Serve (and so possibly the online app and its limiter) runs on this cluster."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return False
    return True


def _running_app_with(app_name: str | None, deployment: str) -> str | None:
    """``app_name`` when that application runs on this cluster with ``deployment``, else ``None``."""
    if app_name is None or not _serve_runs_here():
        return None
    from ray import serve

    app = serve.status().applications.get(app_name)
    return app_name if app is not None and deployment in app.deployments else None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", help="dataset folder (assessment.json + submissions/*.parquet)")
    ap.add_argument("output", help="output folder (local path)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--serve-config", help="take provider, batcher and namespace from this serve_config.yaml")
    src.add_argument("--provider", help="a ProviderConfig as YAML or JSON")
    src.add_argument("--baseline", action="store_true", help="the reference-similarity grader (no model)")
    ap.add_argument("--namespace", help="Ray namespace of the shared token bucket (default: the app's)")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--submissions-per-block", type=int, default=32)
    ap.add_argument("--reading-mode", choices=["auto", "vision", "ocr"], default="auto")
    ap.add_argument("--review-share", type=float, default=0.0)
    ap.add_argument("--review-by", choices=["expected_error", "confidence"], default="expected_error",
                    help="what --review-share ranks by: expected error (share of the maximum) or confidence")
    ap.add_argument("--compare", help="earlier results folder to report changes against")
    ap.add_argument("--no-retry-errors", action="store_true", help="on resume, keep earlier error rows")
    ap.add_argument("--mode", choices=["sync", "batch-api", "vllm-batch"], default="sync",
                    help="sync: requests now, through the rate limiter; batch-api: the provider's batch API "
                         "(OpenAI, Anthropic, Gemini), within 24 h at half the price (resumable: re-run with the same "
                         "OUT); vllm-batch: the same files through vLLM's offline batch runner on the model's "
                         "nodes (a self-hosted model)")
    ap.add_argument("--max-enqueued-tokens", type=int, help="batch-api: the model's enqueued-token limit")
    ap.add_argument("--poll-interval-s", type=float, default=30.0, help="batch-api: seconds between status polls")
    ap.add_argument("--max-rounds", type=int, default=3, help="batch-api: submissions of failed requests, in all")
    ap.add_argument("--fallback", choices=["batch", "sync"], default="batch",
                    help="batch-api: failed requests go in a follow-up batch, or through the sync API")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    serve_app = None
    if a.serve_config:
        app_cfg = _load(a.serve_config)["applications"][0]
        serve_app = app_cfg.get("name", "default")
        # As the online app builds them: the file's args with any RAYGRADE_ARGS__* overrides.
        app_args = resolve_args(app_cfg.get("args") or {})
    elif a.provider:
        app_args = RaygradeArgs(provider=ProviderConfig.model_validate(_load(a.provider)))
    elif a.baseline:
        app_args = RaygradeArgs(provider=reference_similarity_provider())
    else:
        app_args = RaygradeArgs()
    cfg = RegradeConfig(input=a.input, output=a.output, provider=app_args.provider, batcher=app_args.batcher,
                        namespace=a.namespace or app_args.namespace, reading_mode=a.reading_mode, actors=a.actors,
                        submissions_per_block=a.submissions_per_block, review_share=a.review_share,
                        review_by=a.review_by, compare=a.compare, retry_errors=not a.no_retry_errors, mode=a.mode,
                        batch_api=BatchApiConfig(max_enqueued_tokens=a.max_enqueued_tokens,
                                                 poll_interval_s=a.poll_interval_s, max_rounds=a.max_rounds,
                                                 fallback=a.fallback))

    load_assessment(cfg.input)  # a wrong input path fails here, before a cluster starts
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():  # (a caller that already is a Ray driver keeps its connection)
        ray.init(namespace=cfg.namespace)  # the submitting cluster under `ray job submit`, else a local one
    # Ray Data's own bars cannot know the row count of a filtered, repartitioned read (they show
    # "0/?" for the whole run); the driver's lines below count submissions and items with an ETA.
    ray.data.DataContext.get_current().enable_progress_bars = False
    if a.serve_config and cfg.provider.traits.calls_model:
        # Which budget this run draws from: the online app's limiter only lives on the app's cluster.
        where = ("shared with the Serve app on this cluster" if _serve_runs_here() else
                 "NOT shared: no Serve app runs on this cluster (submit with `ray job submit` to the "
                 "app's cluster to share its budget)")
        print(f"rate limiter: {cfg.provider.bucket_key} in namespace {cfg.namespace!r}, at bulk priority, "
              f"{where}", flush=True)
    own_app = None
    if a.mode == "vllm-batch":
        if (model := provider_model(app_args)) is None:
            raise ConfigError("--mode vllm-batch runs a self-hosted model: the provider must be the embedded "
                              "default or a serve_llm model", param="mode")
        engine = app_args.embedded_engine
        cfg = cfg.model_copy(update={"vllm_model": model, "vllm_engine": engine if engine is not None and
                                     engine.served_model_name == model.model_id else None})
        print(f"running model {model.model_id!r} offline with vLLM's batch runner", flush=True)
    elif (model := provider_model(app_args)) is not None:
        # A model served in a Serve application (a self-hosted model or the embedded default): grade
        # through its deployment handle. The online app's, when it runs on this cluster (shared
        # replicas, shared budget); else this run deploys the model itself, for the run only.
        app_name = _running_app_with(serve_app, model.deployment_name)
        if app_name is None:
            from ray import serve

            from raygrade.serve.models import model_deployments

            app_name = own_app = "raygrade-regrade-model"
            print(f"deploying model {model.model_id!r} for this run (Serve application {own_app!r}) ...", flush=True)
            serve.run(model_deployments(app_args)[model.model_id], name=own_app, route_prefix=None)
        else:
            print(f"grading with model {model.model_id!r} of the Serve application {app_name!r}", flush=True)
        cfg = cfg.model_copy(update={"model_deployment": (app_name, model.deployment_name)})

    def show(p: dict) -> None:  # the driver's stdout: `ray job submit` and `ray job logs` stream it
        if cfg.mode != "sync":
            print(f"{cfg.mode}: {p['collected']}/{p['parts']} files done, {p['completed']}/{p['requests']} requests "
                  f"completed, {p['failed']} failed; " + ", ".join(f"{b}: {s}" for b, s in p["batches"].items()),
                  flush=True)
            return
        eta = f", ETA {p['eta_s']:.0f} s" if p["eta_s"] is not None else ""
        print(f"regrade: {p['submissions_done']}/{p['submissions_total']} submissions, {p['items']} items "
              f"({p['items_failed']} failed), {p['per_s']:.1f} submissions/s{eta}", flush=True)

    try:
        summary = run_regrade(cfg, progress=show)
    finally:
        if own_app is not None:
            from ray import serve

            serve.delete(own_app)
    print(f"{summary.submissions} submissions: {summary.skipped} already graded, {summary.graded_now} graded now; "
          f"{summary.items} result rows, {summary.failed_items} with errors -> {Path(cfg.output) / 'results'}")
    if "agreement" in summary.report:
        from raygrade.bulk.report import ci

        ag, gr = summary.report["agreement"], summary.report["agreement_grid"]
        pq = gr["qwk_per_question"]
        print(f"against {summary.report['compared_with']} (n={ag['n']['value']}; 95 % bootstrap intervals), on "
              f"each question's grid: QWK per question (mean of {pq['questions']}) "
              f"{ci(pq) if pq['value'] is not None else '-'}; pooled: QWK {ci(gr['qwk'])}, exact {ci(gr['exact'])}, "
              f"within one step {ci(gr['within_one_step'])}, MAE {ci(gr['mae'])}; on three levels "
              f"(none/partial/full): exact {ci(ag['exact'])}, QWK {ci(ag['qwk'])}")
    print(json.dumps({k: summary.report[k] for k in ("tokens_per_1k_pages", "cost_per_1k_pages_usd", "batch_ids")
                      if k in summary.report}))


if __name__ == "__main__":
    from raygrade._cli import run

    run(main, "jobs/regrade.py")
