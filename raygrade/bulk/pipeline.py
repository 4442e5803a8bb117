"""The bulk regrade pipeline: read, skip what is staged, grade in an actor pool, stage, finalize, report."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raygrade.bulk.config import RegradeConfig
from raygrade.bulk.report import build_report, write_report
from raygrade.bulk.schema import fs_and_path, load_assessment
from raygrade.bulk.staging import completed_submissions, finalize, read_staging
from raygrade.errors import ConfigError, InvalidRequestError

logger = logging.getLogger(__name__)

#: CPUs each grading actor reserves: none. The actors are clients (they wait on the provider or
#: on the model's replicas; ``--actors`` bounds how many), and Ray Data starts the whole pool
#: before the read runs, whose first task (``ListFiles``) reserves a whole CPU that no option
#: lowers: with 0.5 each, two actors and the embedded model's one-CPU bundle took every CPU of
#: a 2-CPU node and the read waited for ever (`ray job submit` as jobs/README.md writes it).
ACTOR_CPUS = 0
#: The grading actors' environment: no progress bars (tqdm's, and Hugging Face's "Loading
#: weights" bar when the baseline loads its embedding model), one per actor in a job's log.
QUIET_ACTOR_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


@dataclasses.dataclass
class RegradeSummary:
    """What one :func:`run_regrade` call did.

    Attributes:
        submissions: Rows in the input.
        skipped: Submissions already graded by an earlier run (resume).
        graded_now: Submissions sent through the pipeline by this run.
        items: Result rows written (submission × question).
        failed_items: Rows carrying an error.
        report: The report's figures (see :func:`build_report`).
    """

    submissions: int
    skipped: int
    graded_now: int
    items: int
    failed_items: int
    report: dict[str, Any]


class _Progress:
    """Counts finished blocks' rows and reports ``{submissions_done, submissions_total, items,
    items_failed, per_s, eta_s}`` after each (to ``report``, else the log at INFO)."""

    def __init__(self, total: int, report: Callable[[dict[str, Any]], None] | None):
        self.total, self.report = total, report
        self.subs = self.items = self.failed = 0
        self.t0 = time.monotonic()

    def add(self, block: pa.Table) -> None:
        self.subs += len(set(block.column("submission_id").to_pylist()))
        self.items += block.num_rows
        self.failed += sum(1 for e in block.column("error_type").to_pylist() if e)
        rate = self.subs / max(1e-9, time.monotonic() - self.t0)
        p = {"submissions_done": self.subs, "submissions_total": self.total, "items": self.items,
             "items_failed": self.failed, "per_s": rate,
             "eta_s": (self.total - self.subs) / rate if rate > 0 else None}
        if self.report is not None:
            self.report(p)
        else:
            logger.info("regrade: %d/%d submissions, %d items (%d failed)", self.subs, self.total, self.items,
                        self.failed)


def run_regrade(cfg: RegradeConfig, progress: Callable[[dict[str, Any]], None] | None = None) -> RegradeSummary:
    """Regrade ``cfg.input`` into ``cfg.output`` on the current Ray cluster (resumable).

    ``progress`` is called after each finished block with ``{submissions_done,
    submissions_total, items, items_failed, per_s, eta_s}`` (seconds; ``None`` before a rate
    is known).

    Raises:
        FileNotFoundError: the dataset has no ``assessment.json`` or no submissions.
        ConfigError: the provider cannot work (missing key, unreachable endpoint, unknown model).
    """
    if cfg.mode in ("batch-api", "vllm-batch"):
        return run_batch_regrade(cfg, progress)
    import ray

    out_dir = Path(cfg.output)
    staging = out_dir / "_staging"
    staging.mkdir(parents=True, exist_ok=True)
    assessment = load_assessment(cfg.input)
    fs, root = fs_and_path(cfg.input)
    # The ids alone, read here (one column; a Ray Data execution for them cost ≈ 4 s of start-up per run).
    ids = [str(x) for x in pq.read_table(f"{root}/submissions", filesystem=fs, columns=["submission_id"])
           .column("submission_id").to_pylist()]
    if len(ids) != len(set(ids)):
        raise InvalidRequestError("submission_id values must be unique")
    done = completed_submissions(read_staging(staging), cfg.retry_errors)
    todo = [i for i in ids if i not in done]
    skipped = len(ids) - len(todo)
    logger.info("%d submissions, %d already graded, %d to grade", len(ids), skipped, len(todo))
    if todo:
        if cfg.provider.served_in_app and cfg.model_deployment is None:
            raise ConfigError(f"provider {cfg.provider.name!r} grades with model {cfg.provider.model!r} served in a "
                              "Serve application: give model_deployment (jobs/regrade.py finds or deploys it)",
                              param="model_deployment")
        from raygrade.providers.registry import check_on_start

        check_on_start(cfg.provider)  # a missing key or an unknown model ends the run here, before any grading
        keep = pa.array(sorted(todo))
        ds = ray.data.read_parquet(f"{root}/submissions", filesystem=fs)
        ds = ds.map_batches(_keep_rows, fn_kwargs={"keep": keep}, batch_format="pyarrow")  # type: ignore[arg-type]
        blocks = max(cfg.actors, math.ceil(len(todo) / cfg.submissions_per_block))
        run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        from raygrade.bulk.udf import (
            RegradeUDF,  # the graders (openai, the limiter actor) load only to grade
        )

        graded = ds.repartition(blocks).map_batches(
            RegradeUDF, fn_constructor_args=(cfg.model_dump(mode="json"), assessment.model_dump(mode="json"), run_id),
            compute=ray.data.ActorPoolStrategy(size=cfg.actors), batch_size=cfg.submissions_per_block,
            batch_format="pyarrow", num_cpus=ACTOR_CPUS, runtime_env={"env_vars": QUIET_ACTOR_ENV})
        # One file per finished block, visible as the run goes on (the resume points), written
        # by this driver under a temporary name and renamed: a kill leaves no half file behind.
        # The same loop reports progress in submissions and items, with an ETA.
        tracker = _Progress(len(todo), progress)
        for k, block in enumerate(graded.iter_batches(batch_size=None, batch_format="pyarrow")):
            tmp = staging / f"{run_id}-{k:06d}.parquet.tmp"
            pq.write_table(block, tmp)
            tmp.rename(staging / f"{run_id}-{k:06d}.parquet")
            tracker.add(block)
    table = finalize(out_dir, cfg.review_share, cfg.review_by)
    report = build_report(table, cfg, assessment)
    write_report(report, table, out_dir)
    errs = sum(1 for e in table.column("error_type").to_pylist() if e)
    return RegradeSummary(len(ids), skipped, len(todo), table.num_rows, errs, report)


def run_batch_regrade(cfg: RegradeConfig, progress: Callable[[dict[str, Any]], None] | None = None, *,
                      client: Any = None, sleep: Callable[[float], None] = time.sleep) -> RegradeSummary:
    """``cfg.mode == "batch-api"``: regrade through the provider's batch API (OpenAI's, Anthropic's
    Message Batches, Gemini's batch mode; :mod:`raygrade.bulk.batch_api`), resumable and exactly
    once; the results, report and staging are the synchronous mode's, and the report adds the
    batch ids and the cost at the batch price. ``"vllm-batch"``: the same files through vLLM's
    offline batch runner on the cluster (:mod:`raygrade.bulk.vllm_batch`).

    ``progress`` gets :meth:`BatchApiRun.progress` after each poll; ``client`` (the provider's
    SDK client: ``openai.OpenAI``, ``anthropic.Anthropic``, ``google.genai.Client``) and ``sleep``
    are injected in tests.

    Raises:
        FileNotFoundError: the dataset has no ``assessment.json`` or no submissions.
        InvalidRequestError: duplicate ``submission_id`` values.
        ConfigError: ``vllm-batch`` without ``vllm_model``.
    """
    from raygrade.bulk.batch_api import BatchApiRun

    out_dir = Path(cfg.output)
    if cfg.mode == "vllm-batch" and client is None:
        if cfg.vllm_model is None:
            raise ConfigError("mode vllm-batch needs the model to run (vllm_model)", param="vllm_model")
        from raygrade.bulk.vllm_batch import VLLMBatchRunner

        client = VLLMBatchRunner(out_dir / "_batch_api" / "vllm", cfg.vllm_model, cfg.vllm_engine)
    (out_dir / "_staging").mkdir(parents=True, exist_ok=True)
    assessment = load_assessment(cfg.input)
    run = BatchApiRun(cfg, assessment, out_dir, client=client, sleep=sleep)
    if not run.state["planned"]:
        fs, root = fs_and_path(cfg.input)
        rows = pq.read_table(f"{root}/submissions", filesystem=fs).to_pylist()
        ids = [str(r["submission_id"]) for r in rows]
        if len(ids) != len(set(ids)):
            raise InvalidRequestError("submission_id values must be unique")
        done = completed_submissions(read_staging(out_dir / "_staging"), cfg.retry_errors)
        todo = [r for r in rows if str(r["submission_id"]) not in done]
        run.state.update(submissions=len(ids), skipped=len(ids) - len(todo))
        logger.info("%d submissions, %d already graded, %d to grade in batches", len(ids), len(ids) - len(todo),
                    len(todo))
        run.plan(todo)
    run.run(progress)
    table = finalize(out_dir, cfg.review_share, cfg.review_by)
    report = build_report(table, cfg, assessment)
    factor = cfg.batch_api.price_factor if cfg.mode == "batch-api" else 1.0
    report["mode"] = cfg.mode
    report["batch_ids"] = [p["batch_id"] for p in run.parts if p["batch_id"]]
    report["price_factor"] = factor
    first = [p for p in run.parts if p["round"] == 0]
    report["estimate"] = {"requests": sum(p["requests"] for p in first),
                          "prompt_tokens": sum(p["tokens"] for p in first)}  # vs report["prompt_tokens"]: actual
    for k in ("cost_usd", "cost_per_1k_pages_usd"):
        if report.get(k) is not None:
            report[k] *= factor
    write_report(report, table, out_dir)
    errs = sum(1 for e in table.column("error_type").to_pylist() if e)
    n = run.state.get("submissions", 0)
    return RegradeSummary(n, run.state.get("skipped", 0), n - run.state.get("skipped", 0), table.num_rows, errs,
                          report)


def _keep_rows(batch: pa.Table, keep: pa.Array) -> pa.Table:
    import pyarrow.compute as pc

    return batch.filter(pc.is_in(batch.column("submission_id").cast(pa.string()), value_set=keep))
