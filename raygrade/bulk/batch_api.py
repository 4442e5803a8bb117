"""Bulk regrades through a provider's batch API (OpenAI's Batch API, Anthropic's Message Batches,
Gemini's batch mode): the same requests at half the price, within 24 h.

``RegradeConfig.mode = "batch-api"`` (``jobs/regrade.py --mode batch-api``). The submissions are
planned into requests exactly as the synchronous mode plans them (:class:`~raygrade.bulk.plan.
BlockPlanner`: same packing, same prompt, same JSON schema); each request is one JSONL line
whose ``custom_id`` derives from its deterministic batch id. Lines go into parts split under
the API's limits (requests and bytes per file); a part becomes one batch (the provider's side,
:mod:`raygrade.providers.batches`: OpenAI's uploaded file and ``/v1/chat/completions``
batch, Anthropic's ``messages.batches.create``, Gemini's ``batches.create``), submitted while
the batches not yet finished stay under the model's enqueued-token limit. Finished batches'
answers are replayed through the same :class:`~raygrade.grading.BatchGrader` as the synchronous path
(schema checks, confidence, calibration), so a grade means the same in both modes.

Exactly once, resumable. Everything lives in ``OUT/_batch_api/``: ``state.json`` (written
atomically after every step) and per part ``<part>.requests.jsonl`` (what is sent),
``<part>.plan.jsonl`` (the planned batches), ``<part>.output.jsonl`` / ``<part>.errors.jsonl``
(what came back). Before an upload or a batch creation the state records the intent; a
re-run that finds an intent without its result looks for what the killed driver made (the
backend's rule: OpenAI's file by its name, which carries its SHA-256, and batch by its input
file; Anthropic's batch by its creation time and size; Gemini's job by its display name) before
doing anything, so a driver killed at any point never submits the same requests twice and loses
no item. A SIGTERM (``ray job stop``) cancels the open batches before the driver exits.

Requests that fail (an error line, an expired or cancelled batch, an answer that fails the
schema) are resubmitted in a follow-up batch, up to ``batch_api.max_rounds`` submissions in
all (or graded synchronously with ``batch_api.fallback: sync``); what is left ends as typed
error rows (``batch_expired``, ``batch_cancelled``, ``provider_error``, ``output_parse_error``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from raygrade.batch import GradeBatch
from raygrade.bulk.batch_collect import BatchCollection, Replay
from raygrade.bulk.config import RegradeConfig
from raygrade.bulk.plan import BlockPlanner
from raygrade.bulk.schema import page_count
from raygrade.grading import batch_request
from raygrade.planner import JSON_OVERHEAD_TOKENS
from raygrade.protocol import Assessment
from raygrade.providers.batches import BatchView
from raygrade.providers.registry import build_batch_backend

logger = logging.getLogger(__name__)


class BatchApiRun(BatchCollection):
    """One regrade's batches: plan, submit, poll, collect (see the module's description).

    Args:
        cfg: The regrade's configuration (``provider`` of a kind with a batch API: an
            OpenAI-compatible endpoint with OpenAI's Batch API, ``anthropic`` or ``gemini``).
        assessment: The dataset's assessment.
        out_dir: The output folder (``_batch_api/`` and ``_staging/`` inside it).
        client: The provider's client (:func:`~raygrade.providers.registry.build_batch_backend`: an
            ``openai.OpenAI``, an ``anthropic.Anthropic`` or a ``google.genai.Client``; default: one
            for ``cfg.provider``).
        sleep: Seconds to wait between polls (injected in tests).
    """

    def __init__(self, cfg: RegradeConfig, assessment: Assessment, out_dir: Path, client: Any = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.cfg, self.assessment, self.sleep = cfg, assessment, sleep
        self.dir, self.staging = out_dir / "_batch_api", out_dir / "_staging"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state: dict[str, Any] = (json.loads((self.dir / "state.json").read_text())
                                      if (self.dir / "state.json").exists() else {"parts": [], "planned": False})
        self.backend = build_batch_backend(cfg.provider, client)
        self._replay = Replay()
        self._grader: Any = None

    # -- state -------------------------------------------------------------------------------
    def save(self) -> None:
        tmp = self.dir / f".state-{uuid.uuid4().hex[:8]}.json"
        tmp.write_text(json.dumps(self.state, indent=1))
        os.replace(tmp, self.dir / "state.json")

    @property
    def parts(self) -> list[dict[str, Any]]:
        return self.state["parts"]

    # -- planning ----------------------------------------------------------------------------
    def plan(self, rows: list[dict[str, Any]]) -> None:
        """Plan the submission ``rows`` into round-0 parts (once per output folder); submissions
        that cannot be read or planned get their error rows in the staging folder now."""
        run_id = self.state.setdefault("run_id", dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
                                       + "-" + uuid.uuid4().hex[:6])
        blocks = BlockPlanner(self.cfg, self.assessment, run_id)
        step = self.cfg.submissions_per_block
        batches, errors = [], []
        for k in range(0, len(rows), step):
            got, _, bad = asyncio.run(blocks.plan_rows(rows[k:k + step]))
            batches += got
            errors += bad
        slim = {str(r["submission_id"]): {"submission_id": str(r["submission_id"]),
                                          "student_id": str(r.get("student_id") or ""),
                                          "page_texts": [""] * page_count(r)} for r in rows}
        (self.dir / "rows.json").write_text(json.dumps(slim))
        self._write_parts(0, batches)
        self._stage("planning", blocks, errors)
        self.state["planned"] = True
        self.save()

    def _stage(self, name: str, blocks: BlockPlanner, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.staging.mkdir(parents=True, exist_ok=True)
            tmp = self.staging / f"batch-{self.state['run_id']}-{name}.parquet.tmp"
            pq.write_table(blocks.table(rows), tmp)
            os.replace(tmp, tmp.with_suffix(""))

    def _write_parts(self, round_: int, batches: list[GradeBatch]) -> None:
        """Request and plan files for ``batches``, split under the per-file limits; new state entries."""
        limits, size = self.cfg.batch_api, 0
        max_bytes = min(limits.max_file_bytes, self.backend.max_part_bytes)
        lines: list[str] = []
        plans: list[GradeBatch] = []

        def flush() -> None:
            nonlocal lines, plans, size
            if not lines:
                return
            name = f"r{round_}-p{sum(p['round'] == round_ for p in self.parts):03d}"
            data = "".join(lines).encode()
            (self.dir / f"{name}.requests.jsonl").write_bytes(data)
            (self.dir / f"{name}.plan.jsonl").write_text("".join(b.model_dump_json() + "\n" for b in plans))
            self.parts.append({"name": name, "round": round_, "requests": len(lines), "status": "planned",
                               # prompt tokens as the provider bills them (the estimate's limiter margin off)
                               "tokens": sum(b.prompt_tokens_estimate - JSON_OVERHEAD_TOKENS for b in plans),
                               "sha256": hashlib.sha256(data).hexdigest(), "file_id": None, "batch_id": None,
                               "batch_status": None, "counts": None})
            lines, plans, size = [], [], 0

        for b in batches:
            request = batch_request(b, b.students, max_tokens=b.max_tokens, bounds=self.cfg.provider.schema_bounds,
                                    feedback_max_chars=self.cfg.provider.feedback_max_chars)
            line = json.dumps(self.backend.request_line(self.backend.custom_id(b.batch_id), request)) + "\n"
            if lines and (len(lines) >= limits.max_requests_per_file or size + len(line) > max_bytes):
                flush()
            lines.append(line)
            plans.append(b)
            size += len(line)
        flush()

    # -- submission --------------------------------------------------------------------------
    def submit(self, part: dict[str, Any]) -> None:
        """Make ``part``'s batch (the backend's upload and creation); after a kill, adopt what was
        already made."""
        data = (self.dir / f"{part['name']}.requests.jsonl").read_bytes()
        taken = {p["batch_id"] for p in self.parts if p is not part and p["batch_id"]}
        self.backend.submit(part, data, self.save, taken)
        part["status"], part["batch_status"] = "submitted", "validating"
        self.save()
        logger.info("batch %s submitted (%s, %d requests)", part["batch_id"], part["name"], part["requests"])

    def refresh(self, part: dict[str, Any]) -> BatchView:
        """Poll ``part``'s batch; returns its state."""
        b = self.backend.retrieve(part["batch_id"])
        part["batch_status"], part["counts"] = b.status, b.counts
        return b

    def cancel_open(self) -> list[str]:
        """Cancel every batch not finished (``ray job stop``); returns their ids."""
        ids = [p["batch_id"] for p in self.parts if p["status"] == "submitted"]
        for bid in ids:
            try:
                self.backend.cancel(bid)
            except Exception as exc:  # already finished, or the API is unreachable: the next run resumes
                logger.warning("could not cancel batch %s (%s)", bid, type(exc).__name__)
        self.save()
        return ids

    # -- the loop ----------------------------------------------------------------------------
    def run(self, progress: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Submit, poll and collect until every part is collected (a SIGTERM cancels the open
        batches first, then ends the run; a re-run resumes)."""
        limit = self.cfg.batch_api.max_enqueued_tokens
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            while any(p["status"] != "collected" for p in self.parts):
                moved = False
                for p in self.parts:
                    if p["status"] == "submitted":
                        b = self.refresh(p)
                        if b.terminal:
                            if b.resubmit:  # the same part, again later
                                p.update(status="uploaded" if p.get("file_id") else "planned", batch_id=None)
                            else:
                                self.collect(p, b)
                            moved = True
                enqueued = sum(p["tokens"] for p in self.parts if p["status"] == "submitted")
                for p in self.parts:
                    if p["status"] in ("planned", "uploading", "uploaded", "creating") and (
                            limit is None or enqueued == 0 or enqueued + p["tokens"] <= limit):
                        self.submit(p)
                        enqueued += p["tokens"]
                        moved = True
                self.save()
                if progress is not None:
                    progress(self.progress())
                if not moved and any(p["status"] != "collected" for p in self.parts):
                    self.sleep(self.cfg.batch_api.poll_interval_s)
        except (KeyboardInterrupt, SystemExit):
            logger.warning("stopping: cancelled batches %s; re-run to resume", self.cancel_open())
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def progress(self) -> dict[str, Any]:
        """``{parts, collected, requests, completed, failed, batches: {id: status}}`` so far."""
        counts = [p["counts"] or {} for p in self.parts]
        return {"parts": len(self.parts), "collected": sum(p["status"] == "collected" for p in self.parts),
                "requests": sum(p["requests"] for p in self.parts),
                "completed": sum(c.get("completed", 0) for c in counts),
                "failed": sum(c.get("failed", 0) for c in counts),
                "batches": {p["batch_id"]: p["batch_status"] for p in self.parts if p["batch_id"]}}



def _terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)
