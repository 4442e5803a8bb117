"""What a regrade will cost before anything is sent (``raygrade estimate``).

The submissions are planned exactly as a regrade plans them (:class:`~raygrade.bulk.plan.
BlockPlanner`: the provider's tokenizer for text, its image rule for page images, the same
packing), so the figures are the requests a run would send: their number, prompt tokens (of
which images), and the completion budget (``max_tokens``: the most the run can be charged for
output). Prices are the provider's ``price_per_mtok_{input,output}_usd``; the Batch API's
are ``price_factor`` of them (OpenAI: 50 %).
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from raygrade.bulk.config import RegradeConfig
from raygrade.bulk.plan import BlockPlanner
from raygrade.bulk.schema import fs_and_path, load_assessment
from raygrade.planner import JSON_OVERHEAD_TOKENS


@dataclasses.dataclass
class Estimate:
    """A regrade's requests and tokens, by raygrade's planner.

    Attributes:
        submissions: Submissions planned.
        requests: Requests (one per planned batch).
        prompt_tokens: Prompt tokens of all requests (``image_tokens`` of them images).
        image_tokens: The images' part of ``prompt_tokens``, by the provider's image rule.
        max_completion_tokens: The requests' ``max_tokens`` summed (an upper bound on output).
        unplanned_items: Items that would be error rows (unreadable pages, over the context).
        unplanned_reasons: Their reasons (``"<error type>: <message>"``) and item counts.
    """

    submissions: int
    requests: int
    prompt_tokens: int
    image_tokens: int
    max_completion_tokens: int
    unplanned_items: int
    unplanned_reasons: dict[str, int] = dataclasses.field(default_factory=dict)

    def usd(self, price_in: float, price_out: float, factor: float = 1.0) -> tuple[float, float]:
        """``(prompt cost, the most the output can cost)`` in USD at per-million-token prices × ``factor``."""
        return (self.prompt_tokens / 1e6 * price_in * factor, self.max_completion_tokens / 1e6 * price_out * factor)

    def as_dict(self, price_in: float, price_out: float, factor: float) -> dict[str, Any]:
        """The figures and the cost, synchronous and batch (USD; the output part at most)."""
        sync, batch = self.usd(price_in, price_out), self.usd(price_in, price_out, factor)
        return {**dataclasses.asdict(self), "price_per_mtok_input_usd": price_in,
                "price_per_mtok_output_usd": price_out, "batch_price_factor": factor,
                "usd_sync": {"prompt": sync[0], "completion_at_most": sync[1], "total_at_most": sum(sync)},
                "usd_batch": {"prompt": batch[0], "completion_at_most": batch[1], "total_at_most": sum(batch)}}


def estimate(cfg: RegradeConfig) -> Estimate:
    """Plan ``cfg.input`` (a dataset in the regrade layout) as a regrade would, and count.

    Raises:
        FileNotFoundError: no ``assessment.json`` or no submissions.
    """
    assessment = load_assessment(cfg.input)
    fs, root = fs_and_path(cfg.input)
    rows = pq.read_table(f"{root}/submissions", filesystem=fs).to_pylist()
    blocks = BlockPlanner(cfg, assessment, "estimate")
    out = Estimate(len(rows), 0, 0, 0, 0, 0)
    for k in range(0, len(rows), cfg.submissions_per_block):
        batches, _, errors = asyncio.run(blocks.plan_rows(rows[k:k + cfg.submissions_per_block]))
        out.requests += len(batches)
        # The planner's prompt estimate carries a margin for the limiter's reservations (the
        # answer's JSON punctuation, JSON_OVERHEAD_TOKENS a request) that no provider bills as input.
        out.prompt_tokens += sum(b.prompt_tokens_estimate - JSON_OVERHEAD_TOKENS for b in batches)
        out.image_tokens += sum(b.image_tokens_estimate for b in batches)
        out.max_completion_tokens += sum(b.max_tokens for b in batches)
        out.unplanned_items += len(errors)
        for e in errors:
            reason = f"{e['error_type']}: {e['error_message']}"
            out.unplanned_reasons[reason] = out.unplanned_reasons.get(reason, 0) + 1
    return out


def estimate_job(job_json: str | Path, cfg: RegradeConfig) -> Estimate:
    """:func:`estimate` for a ``POST /v1/jobs`` body in a file (written to the regrade layout first)."""
    from raygrade.datasets import job_to_dataset
    from raygrade.protocol import GradingJob

    job = GradingJob.model_validate_json(Path(job_json).read_text())
    with tempfile.TemporaryDirectory(prefix="raygrade-estimate-") as tmp:
        ds = job_to_dataset(job, Path(tmp) / "ds")
        return estimate(cfg.model_copy(update={"input": str(ds)}))


def table(est: Estimate, price_in: float, price_out: float, factor: float) -> str:
    """The estimate as a Markdown table: requests, tokens and USD, synchronous vs batch."""
    d = est.as_dict(price_in, price_out, factor)
    s, b = d["usd_sync"], d["usd_batch"]
    return "\n".join([
        f"{est.submissions} submissions -> {est.requests} requests ({est.unplanned_items} items unplanned)",
        "",
        "| | tokens | USD sync | USD batch |",
        "|---|---:|---:|---:|",
        f"| prompt (images {est.image_tokens:,}) | {est.prompt_tokens:,} | {s['prompt']:.4f} | {b['prompt']:.4f} |",
        f"| completion, at most | {est.max_completion_tokens:,} | {s['completion_at_most']:.4f} | "
        f"{b['completion_at_most']:.4f} |",
        f"| total, at most | {est.prompt_tokens + est.max_completion_tokens:,} | {s['total_at_most']:.4f} | "
        f"{b['total_at_most']:.4f} |",
        "",
        f"prices: {price_in} / {price_out} USD per million input / output tokens; batch x{factor}"])
