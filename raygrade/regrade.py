"""Bulk regrades with Ray Data: Parquet in, Parquet out, resumable, with a report.

Dataset layout (what :mod:`raygrade.datasets` writes and :func:`run_regrade` reads)::

    DATASET/assessment.json          raygrade Assessment (questions, references, rubric, examples)
    DATASET/submissions/*.parquet    one row per submission:
        submission_id  string        unique; the resume key
        student_id     string
        question_ids   list<string>  null = every question
        page_images    list<binary>  PNG/JPEG pages in order   } one of the two
        page_texts     list<string>  typed or transcribed pages }
        human_scores   string        optional JSON {question_id: score} for the report

Output::

    OUT/results/*.parquet   one row per submission and question (RESULT_SCHEMA); appears
                            only when the run has finished (written aside, then renamed)
    OUT/_staging/           what finished blocks wrote while the run went on; a re-run
                            skips submissions graded there (a file cut short by a kill
                            fails to open and is discarded)
    OUT/report.json, report.md, confusion.png

Why not Ray Data's ``CheckpointConfig``: it needs an id column that is unique and
kept by every operator, and this pipeline turns one submission row into one row
per question; the staging files give the same resume at submission granularity.

Grading runs in an actor pool (``BatchGradingUDF``'s sibling :class:`RegradeUDF`):
each block's submissions are read (OCR for text-only models), planned into
token-budgeted batches by the same planner as the online app, and graded at
``bulk`` priority through the cluster's token-bucket actor, so a regrade never
overruns or starves online grading. A row or batch that fails becomes error rows
with the error's type; it never drops its block or fails the job.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from raygrade.config import BatcherConfig, ProviderConfig, default_provider
from raygrade.errors import InvalidRequestError, RaygradeError, ReadingError
from raygrade.batch import BatchOutcome, GradeBatch
from raygrade.prompts import PROMPT_VERSION, StudentWork
from raygrade.protocol import Assessment, GradingJob, ImagePage, ReadingMode, Submission, TextPage
from raygrade.review import review_cut

logger = logging.getLogger(__name__)

RESULT_SCHEMA = pa.schema([
    ("submission_id", pa.string()), ("student_id", pa.string()), ("question_id", pa.string()),
    ("score", pa.float64()), ("max_score", pa.float64()), ("feedback", pa.string()),
    ("confidence", pa.float64()), ("confidence_source", pa.string()), ("confidence_calibrated", pa.bool_()),
    ("baseline_agrees", pa.bool_()), ("needs_review", pa.bool_()), ("model", pa.string()),
    ("prompt_version", pa.string()), ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
    ("pages", pa.int64()), ("batch_id", pa.string()), ("error_type", pa.string()), ("error_message", pa.string()),
    ("run_id", pa.string()), ("graded_at", pa.string()),
])


class RegradeConfig(BaseModel):
    """Arguments of :func:`run_regrade` (``jobs/regrade.py`` flags map onto these).

    Attributes:
        input: Dataset folder (local path or any URI pyarrow's filesystems open).
        output: Output folder (local path).
        provider: Who grades (default: the app's default provider).
        batcher: Packing budgets (default: the provider's preset, as in the Serve app).
        namespace: Ray namespace of the shared token-bucket actor (the Serve app's).
        reading_mode: ``auto`` (vision if the provider supports it, else OCR), ``vision`` or ``ocr``.
        actors: Grading actors in the pool.
        submissions_per_block: Submissions planned and graded together by one actor call.
        batches_in_flight: Concurrent provider calls per actor.
        review_share: Share of graded items flagged ``needs_review`` (least confident first).
        retry_errors: On resume, regrade submissions whose earlier rows carry an error.
        compare: Earlier results (a ``results`` folder) to report changes against.
        base_url: Endpoint for a ``local_vllm`` provider (the embedded engine started by the driver).
    """

    model_config = ConfigDict(extra="forbid")

    input: str
    output: str
    provider: ProviderConfig = Field(default_factory=default_provider)
    batcher: BatcherConfig | None = None
    namespace: str = "raygrade"
    reading_mode: ReadingMode = ReadingMode.AUTO
    actors: int = Field(default=2, ge=1)
    submissions_per_block: int = Field(default=32, ge=1)
    batches_in_flight: int = Field(default=8, ge=1)
    review_share: float = Field(default=0.0, ge=0, le=1)
    retry_errors: bool = True
    compare: str | None = None
    base_url: str | None = None

    def batcher_config(self) -> BatcherConfig:
        """The batcher budgets in force (the Serve app's presets when unset)."""
        if self.batcher is not None:
            return self.batcher
        from raygrade.config import RaygradeArgs

        return RaygradeArgs(provider=self.provider).batcher


# -- reading the dataset --------------------------------------------------------------------
def _fs_and_path(uri: str):
    import pyarrow.fs as pafs

    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


def load_assessment(dataset: str) -> Assessment:
    """``DATASET/assessment.json`` as an :class:`Assessment`.

    Raises:
        FileNotFoundError: no ``assessment.json``.
        pydantic.ValidationError: it is not a valid assessment.
    """
    fs, root = _fs_and_path(dataset)
    with fs.open_input_stream(f"{root}/assessment.json") as f:
        return Assessment.model_validate_json(f.read())


def submission_rows_to_jobs(rows: list[dict[str, Any]], assessment: Assessment
                            ) -> tuple[list[Submission], list[dict[str, Any]]]:
    """Turn dataset rows into :class:`Submission` s; rows that are not valid become error rows."""
    qids = {q.id for q in assessment.questions}
    subs, errors = [], []
    for r in rows:
        sid = str(r["submission_id"])
        wanted = list(r.get("question_ids") or []) or None
        try:
            if wanted and (unknown := set(wanted) - qids):
                raise InvalidRequestError(f"unknown question ids {sorted(unknown)}")
            images, texts = r.get("page_images"), r.get("page_texts")
            if images is not None and len(images):
                pages = [ImagePage(data=base64.b64encode(bytes(b)).decode()) for b in images]
            elif texts is not None and len(texts):
                pages = [TextPage(text=str(t)) for t in texts]
            else:
                raise InvalidRequestError("submission has no pages")
            subs.append(Submission(student_id=sid, pages=pages, question_ids=wanted))
        except (RaygradeError, ValueError) as exc:
            etype = exc.error_type if isinstance(exc, RaygradeError) else InvalidRequestError.error_type
            msg = exc.message if isinstance(exc, RaygradeError) else "invalid submission row"
            errors.extend(_error_rows(r, _row_questions(r, assessment), etype, msg, assessment))
    return subs, errors


def _row_questions(row: dict[str, Any], assessment: Assessment) -> list[str]:
    """The question ids a dataset row answers (every question when it names none)."""
    return list(row.get("question_ids") or []) or [q.id for q in assessment.questions]


def _error_rows(row: dict[str, Any], qids: Iterable[str], etype: str, msg: str, assessment: Assessment,
                batch_id: str | None = None) -> list[dict[str, Any]]:
    qmax = {q.id: q.max_score for q in assessment.questions}
    return [{"submission_id": str(row["submission_id"]), "student_id": str(row.get("student_id") or ""),
             "question_id": q, "score": None, "max_score": qmax.get(q), "feedback": None, "confidence": None,
             "confidence_source": None, "confidence_calibrated": False, "baseline_agrees": None,
             "needs_review": False, "model": None, "prompt_version": PROMPT_VERSION,
             "prompt_tokens": 0, "completion_tokens": 0, "pages": _page_count(row), "batch_id": batch_id, "error_type": etype,
             "error_message": msg} for q in qids]


def _page_count(row: dict[str, Any]) -> int:
    for col in ("page_images", "page_texts"):
        v = row.get(col)
        if v is not None and len(v):
            return len(v)
    return 0


# -- the grading UDF ------------------------------------------------------------------------
class RegradeUDF:
    """``map_batches`` callable class: grades a block of submission rows, returns result rows.

    Args:
        config: :class:`RegradeConfig` as a dict.
        assessment: The dataset's assessment as a dict.
        run_id: Identifies this run in the output rows.
    """

    def __init__(self, config: dict[str, Any], assessment: dict[str, Any], run_id: str):
        from raygrade.config import RaygradeArgs
        from raygrade.graders import cluster_grader
        from raygrade.planner import planner_for

        self.cfg = RegradeConfig.model_validate(config)
        self.assessment = Assessment.model_validate(assessment)
        self.run_id = run_id
        batcher = self.cfg.batcher_config()
        self.planner = planner_for(RaygradeArgs(provider=self.cfg.provider, batcher=batcher,
                                                namespace=self.cfg.namespace))
        self.loop = asyncio.new_event_loop()
        self.grader = cluster_grader(self.cfg.provider, self.cfg.namespace, priority="bulk",
                                     max_parse_retries=batcher.max_parse_retries, base_url=self.cfg.base_url)
        mode = self.cfg.reading_mode
        if mode == ReadingMode.AUTO:
            mode = ReadingMode.VISION if self.cfg.provider.supports_vision else ReadingMode.OCR
        self.mode = mode
        self._ocr = None

    def _read(self, sub: Submission) -> list[TextPage | ImagePage]:
        if self.mode != ReadingMode.OCR:
            return list(sub.pages)
        if self._ocr is None:
            from raygrade.reading.ocr import OCRReader

            self._ocr = OCRReader()
        return [TextPage(text=self._ocr.read(p.image_bytes())) if isinstance(p, ImagePage) else p for p in sub.pages]

    def __call__(self, block: pa.Table) -> pa.Table:
        asyncio.set_event_loop(self.loop)  # Ray Data may call from a worker thread
        rows = block.to_pylist()
        try:
            out = self.loop.run_until_complete(self._grade_rows(rows))
        except Exception as exc:  # never fail the job for one block: error rows instead
            logger.exception("block failed")
            etype = exc.error_type if isinstance(exc, RaygradeError) else "internal_error"
            out = [e for r in rows for e in _error_rows(r, _row_questions(r, self.assessment), etype,
                                                        f"block failed: {type(exc).__name__}", self.assessment)]
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        for r in out:
            r["run_id"], r["graded_at"] = self.run_id, now
        return pa.Table.from_pylist([{c: r.get(c) for c in RESULT_SCHEMA.names} for r in out], schema=RESULT_SCHEMA)

    async def _grade_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        by_id = {str(r["submission_id"]): r for r in rows}
        subs, out = submission_rows_to_jobs(rows, self.assessment)
        if not subs:
            return out
        job = GradingJob(assessment=self.assessment, submissions=subs)
        works = []
        for i, sub in enumerate(subs):
            qids = [q.id for q in job.questions_for(sub)]
            try:
                pages = await asyncio.to_thread(self._read, sub)
            except Exception as exc:
                out.extend(_error_rows(by_id[sub.student_id], qids, ReadingError.error_type,
                                       f"reading failed: {type(exc).__name__}", self.assessment))
                continue
            works.append(StudentWork(student_id=sub.student_id, alias=f"s{i + 1}", pages=pages,
                                     page_indices=list(range(len(sub.pages))), question_ids=qids))
        if not works:
            return out
        ok = sorted(w.student_id for w in works)
        job_id = f"regrade-{self.run_id}-{hashlib.sha1(''.join(ok).encode()).hexdigest()[:10]}"
        batches, plan_errors = self.planner.batches(job_id, job, works, self.mode == ReadingMode.VISION)
        for e in plan_errors:
            for sid in e.student_ids:
                out.extend(_error_rows(by_id[sid], e.question_ids, e.type, e.message, self.assessment))
        sem = asyncio.Semaphore(self.cfg.batches_in_flight)

        async def grade(b: GradeBatch) -> tuple[GradeBatch, BatchOutcome]:
            async with sem:
                return b, await self.grader.grade(b)

        for b, outcome in await asyncio.gather(*(grade(b) for b in batches)):
            out.extend(self._outcome_rows(b, outcome, by_id))
        return out

    def _outcome_rows(self, b: GradeBatch, outcome: BatchOutcome, by_id: dict[str, dict[str, Any]]
                      ) -> list[dict[str, Any]]:
        rows = []
        for g in outcome.results:
            src = by_id[g.student_id]
            rows.append({"submission_id": g.student_id, "student_id": str(src.get("student_id") or ""),
                         "question_id": g.question_id, "score": g.score, "max_score": g.max_score,
                         "feedback": g.feedback, "confidence": g.confidence,
                         "confidence_source": g.confidence_source,
                         "confidence_calibrated": g.confidence_calibrated, "baseline_agrees": g.baseline_agrees,
                         "needs_review": False,
                         "model": g.model, "prompt_version": outcome.prompt_version,
                         "prompt_tokens": g.usage.prompt_tokens, "completion_tokens": g.usage.completion_tokens,
                         "pages": _page_count(src), "batch_id": b.batch_id, "error_type": None,
                         "error_message": None})
        for e in outcome.errors:
            for sid in e.student_ids:
                rows.extend(_error_rows(by_id[sid], e.question_ids, e.type, e.message, self.assessment, b.batch_id))
        return rows


# -- staging, resume and the atomic output --------------------------------------------------
def read_staging(staging: Path) -> pa.Table:
    """Every complete staging file as one table; files cut short by a kill are deleted."""
    tables = []
    for f in sorted(staging.glob("*.parquet")) if staging.is_dir() else []:
        try:
            tables.append(pq.read_table(f, schema=RESULT_SCHEMA))
        except (pa.ArrowInvalid, OSError) as exc:
            logger.warning("discarding incomplete staging file %s (%s)", f.name, type(exc).__name__)
            f.unlink()
    return pa.concat_tables(tables) if tables else RESULT_SCHEMA.empty_table()


def completed_submissions(staged: pa.Table, retry_errors: bool = True) -> set[str]:
    """Submission ids already graded in ``staged`` (with ``retry_errors``: only those whose
    latest row for every question carries no error)."""
    rows = latest_rows(staged)
    ids = {r["submission_id"] for r in rows}
    if not retry_errors:
        return ids
    return ids - {r["submission_id"] for r in rows if r["error_type"]}


def latest_rows(staged: pa.Table) -> list[dict[str, Any]]:
    """One row per (submission, question): the newest graded row, else the newest error row."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for r in staged.to_pylist():
        k = (r["submission_id"], r["question_id"])
        cur = best.get(k)
        rank = (r["error_type"] is None, r["graded_at"] or "")
        if cur is None or rank > (cur["error_type"] is None, cur["graded_at"] or ""):
            best[k] = r
    return sorted(best.values(), key=lambda r: (r["submission_id"], r["question_id"]))


def finalize(out_dir: Path, review_share: float = 0.0) -> pa.Table:
    """Write ``OUT/results`` from the staging files, atomically (write aside, then rename).

    Applies the review cut over the whole run: the least confident ``review_share`` of the
    graded items get ``needs_review``.
    """
    rows = latest_rows(read_staging(out_dir / "_staging"))
    graded = [i for i, r in enumerate(rows) if r["error_type"] is None]
    for i in review_cut([rows[i]["confidence"] for i in graded], review_share):
        rows[graded[i]]["needs_review"] = True
    table = pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)
    tmp = out_dir / f".results-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    pq.write_table(table, tmp / "part-00000.parquet")
    final = out_dir / "results"
    if final.exists():
        old = out_dir / f".results-old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        os.replace(tmp, final)
        _rmtree(old)
    else:
        os.replace(tmp, final)
    return table


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)


# -- the pipeline ---------------------------------------------------------------------------
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
    import ray

    out_dir = Path(cfg.output)
    staging = out_dir / "_staging"
    staging.mkdir(parents=True, exist_ok=True)
    assessment = load_assessment(cfg.input)
    fs, root = _fs_and_path(cfg.input)
    ds = ray.data.read_parquet(f"{root}/submissions", filesystem=fs)
    ids = [str(x) for x in ds.select_columns(["submission_id"]).to_pandas()["submission_id"]]
    if len(ids) != len(set(ids)):
        raise InvalidRequestError("submission_id values must be unique")
    done = completed_submissions(read_staging(staging), cfg.retry_errors)
    todo = [i for i in ids if i not in done]
    skipped = len(ids) - len(todo)
    logger.info("%d submissions, %d already graded, %d to grade", len(ids), skipped, len(todo))
    if todo:
        if cfg.provider.kind == "openai_compatible" and cfg.provider.check_on_start:
            from raygrade.providers.openai_compat import check_provider

            check_provider(cfg.provider)  # a missing key or an unknown model ends the run here, before any grading
        keep = pa.array(sorted(todo))
        ds = ds.map_batches(_keep_rows, fn_kwargs={"keep": keep}, batch_format="pyarrow")
        blocks = max(cfg.actors, math.ceil(len(todo) / cfg.submissions_per_block))
        run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        graded = ds.repartition(blocks).map_batches(
            RegradeUDF, fn_constructor_args=(cfg.model_dump(mode="json"), assessment.model_dump(mode="json"), run_id),
            compute=ray.data.ActorPoolStrategy(size=cfg.actors), batch_size=cfg.submissions_per_block,
            batch_format="pyarrow", num_cpus=0.5)
        # One file per finished block, visible as the run goes on (the resume points), written
        # by this driver under a temporary name and renamed: a kill leaves no half file behind.
        # The same loop reports progress in submissions and items, with an ETA.
        tracker = _Progress(len(todo), progress)
        for k, block in enumerate(graded.iter_batches(batch_size=None, batch_format="pyarrow")):
            tmp = staging / f"{run_id}-{k:06d}.parquet.tmp"
            pq.write_table(block, tmp)
            tmp.rename(staging / f"{run_id}-{k:06d}.parquet")
            tracker.add(block)
    table = finalize(out_dir, cfg.review_share)
    report = build_report(table, cfg, assessment)
    write_report(report, table, out_dir)
    errs = sum(1 for e in table.column("error_type").to_pylist() if e)
    return RegradeSummary(len(ids), skipped, len(todo), table.num_rows, errs, report)


def _keep_rows(batch: pa.Table, keep: pa.Array) -> pa.Table:
    import pyarrow.compute as pc

    return batch.filter(pc.is_in(batch.column("submission_id").cast(pa.string()), value_set=keep))


# -- the report -----------------------------------------------------------------------------
def _reference_scores(cfg: RegradeConfig) -> tuple[str, dict[tuple[str, str], float]]:
    """(what we compare against, {(submission, question): score}): earlier results if given,
    else the dataset's ``human_scores``."""
    if cfg.compare:
        prev = pq.read_table(cfg.compare).to_pylist()
        return "previous grades", {(r["submission_id"], r["question_id"]): r["score"] for r in prev
                                   if r.get("score") is not None}
    fs, root = _fs_and_path(cfg.input)
    import pyarrow.dataset as pads

    data = pads.dataset(f"{root}/submissions", filesystem=fs, format="parquet")
    if "human_scores" not in data.schema.names:
        return "nothing", {}
    t = data.to_table(columns=["submission_id", "human_scores"]).to_pylist()
    out = {}
    for r in t:
        for q, s in json.loads(r["human_scores"] or "{}").items():
            if s is not None:
                out[(str(r["submission_id"]), q)] = float(s)
    return "human scores", out


def build_report(table: pa.Table, cfg: RegradeConfig, assessment: Assessment, top: int = 20) -> dict[str, Any]:
    """What changed: agreement with the reference scores, biggest moves, tokens and cost.

    Agreement (:mod:`raygrade.evaluation`): exact on three levels (none/partial/full),
    within one point (``|new − old| ≤ 1`` in score units), quadratic weighted kappa and
    Cohen's kappa on the levels, MAE as a fraction of the maximum; a 3×3 confusion
    matrix of levels (rows: reference, columns: new). Cost per 1,000 pages uses the
    provider's ``price_per_mtok_{input,output}_usd``.
    """
    from raygrade.evaluation import agreement, score_level

    rows = table.to_pylist()
    against, ref = _reference_scores(cfg)
    pairs, moves = [], []
    confusion = [[0, 0, 0] for _ in range(3)]
    for r in rows:
        old = ref.get((r["submission_id"], r["question_id"]))
        if old is None or r["score"] is None:
            continue
        pairs.append((old, r["score"], r["max_score"]))
        confusion[score_level(old, r["max_score"])][score_level(r["score"], r["max_score"])] += 1
        moves.append({"submission_id": r["submission_id"], "question_id": r["question_id"], "old": old,
                      "new": r["score"], "delta": r["score"] - old, "confidence": r["confidence"]})
    graded = [r for r in rows if r["error_type"] is None]
    pages = {r["submission_id"]: r["pages"] for r in rows}
    n_pages = sum(pages.values())
    p_tok = sum(r["prompt_tokens"] or 0 for r in rows)
    c_tok = sum(r["completion_tokens"] or 0 for r in rows)
    prov = cfg.provider
    cost = p_tok / 1e6 * prov.price_per_mtok_input_usd + c_tok / 1e6 * prov.price_per_mtok_output_usd
    errors: dict[str, int] = {}
    for r in rows:
        if r["error_type"]:
            errors[r["error_type"]] = errors.get(r["error_type"], 0) + 1
    report: dict[str, Any] = {
        "items": len(rows), "graded": len(graded), "errors": errors,
        "needs_review": sum(1 for r in rows if r["needs_review"]),
        "submissions": len(pages), "pages": n_pages, "model": prov.model, "prompt_version": PROMPT_VERSION,
        "prompt_tokens": p_tok, "completion_tokens": c_tok,
        "tokens_per_1k_pages": (p_tok + c_tok) / n_pages * 1000 if n_pages else None,
        "cost_usd": cost, "cost_per_1k_pages_usd": cost / n_pages * 1000 if n_pages else None,
        "compared_with": against, "compared_items": len(pairs),
    }
    if pairs:
        a = agreement(pairs)
        report["agreement"] = {"exact": a.exact, "within_one_point": sum(abs(n - o) <= 1 + 1e-9 for o, n, _ in pairs)
                               / len(pairs), "qwk": a.qwk, "kappa": a.kappa, "mae": a.mae, "n": a.n}
        report["confusion"] = {"labels": ["none", "partial", "full"], "rows_reference_cols_new": confusion}
        moved = [m for m in moves if abs(m["delta"]) > 1e-9]  # items that did not move are not listed
        report["moved_most"] = sorted(moved, key=lambda m: (-abs(m["delta"]), m["submission_id"]))[:top]
    return report


def write_report(report: dict[str, Any], table: pa.Table, out_dir: Path) -> None:
    """``report.json``, ``report.md`` and (with a comparison) ``confusion.png`` in ``out_dir``.

    The PNG needs matplotlib (``pip install 'raygrade[plots]'``); without it the report
    says so and keeps the confusion matrix as a Markdown table: the grading already
    paid for is never lost to a missing plotting library."""
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    lines = [f"# Regrade report ({report['model']}, prompt {report['prompt_version']})", "",
             f"- items: {report['items']} ({report['graded']} graded, errors {report['errors'] or 'none'}), "
             f"{report['needs_review']} flagged for review",
             f"- submissions: {report['submissions']}, pages: {report['pages']}",
             f"- tokens: {report['prompt_tokens']} prompt + {report['completion_tokens']} completion"
             + (f" = {report['tokens_per_1k_pages']:.0f} per 1,000 pages" if report["tokens_per_1k_pages"] else ""),
             f"- estimated cost: {report['cost_usd']:.4f} USD"
             + (f" ({report['cost_per_1k_pages_usd']:.4f} per 1,000 pages)" if report["pages"] else "")]
    if "agreement" in report:
        a = report["agreement"]
        lines += ["", f"## Against {report['compared_with']} ({a['n']} items)", "",
                  "| exact | within one point | QWK | Cohen's κ | MAE (of max) |", "|---|---|---|---|---|",
                  f"| {a['exact']:.3f} | {a['within_one_point']:.3f} | {a['qwk']:.3f} | {a['kappa']:.3f} | "
                  f"{a['mae']:.3f} |", "", "## Moved most", "", "| submission | question | old | new |",
                  "|---|---|---|---|"]
        lines += [f"| {m['submission_id']} | {m['question_id']} | {m['old']:g} | {m['new']:g} |"
                  for m in report["moved_most"]]
        conf = report["confusion"]
        lines += ["", f"## Score levels (rows: {report['compared_with']}, columns: new)", "",
                  "| | " + " | ".join(conf["labels"]) + " |", "|---" * (len(conf["labels"]) + 1) + "|"]
        lines += [f"| {label} | " + " | ".join(str(n) for n in row) + " |"
                  for label, row in zip(conf["labels"], conf["rows_reference_cols_new"])]
        from raygrade._optional import has_module

        if has_module("matplotlib"):
            _confusion_png(conf, report["compared_with"], out_dir / "confusion.png")
        else:
            lines += ["", "(confusion.png not drawn: pip install 'raygrade[plots]')"]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")


def _confusion_png(confusion: dict[str, Any], against: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, labels = confusion["rows_reference_cols_new"], confusion["labels"]
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(m, cmap="Blues")
    for i in range(3):
        for j in range(3):
            ax.text(j, i, str(m[i][j]), ha="center", va="center")
    ax.set_xticks(range(3), labels)
    ax.set_yticks(range(3), labels)
    ax.set_xlabel("new grade")
    ax.set_ylabel(against)
    ax.set_title("Score levels")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
