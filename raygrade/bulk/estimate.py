"""What a regrade will cost before anything is sent (``raygrade estimate``).

The submissions are planned exactly as a regrade plans them (:class:`~raygrade.bulk.plan.
BlockPlanner`: the provider's tokenizer for text, its image rule for page images, the same
packing), so the figures are the requests a run would send: their number, prompt tokens (of
which images), and the completion budget (``max_tokens``: the most the run can be charged for
output). Prices are the provider's ``price_per_mtok_{input,output}_usd``; the Batch API's
are ``price_factor`` of them (OpenAI: 50 %).

**Prompt caching.** Every request of an assessment starts with the same prefix (instructions,
questions, rubric, reference answers, graded examples: the batch's ``prefix_tokens_estimate``).
Where the prefix reaches the provider's smallest cacheable prompt (``prompt_cache_min_tokens``),
the first request of each group of questions writes it to the cache and every later one reads
it: the run's requests go out minutes apart, well within every provider's cache lifetime
(OpenAI and Anthropic 5 minutes, refreshed on each hit). With the provider's cache prices
(``price_per_mtok_cache_read_usd``; ``price_per_mtok_cache_write_usd`` where writes cost more,
Anthropic's 1.25×) the cost is given with and without caching. A provider may cache less than
this (OpenAI caches in 128-token steps, so up to 127 tokens a request less, and only on a
best-effort basis), so the cached figure is the cost when the cache holds; what the provider did
cache is reported per call (``raygrade_provider_tokens_total{kind="cached_prompt"}``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from raygrade.bulk.config import RegradeConfig
from raygrade.bulk.plan import BlockPlanner
from raygrade.bulk.schema import fs_and_path, load_assessment
from raygrade.config import ProviderConfig, RaygradeArgs
from raygrade.errors import ConfigError
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
        cache_read_tokens: The part of ``prompt_tokens`` that is a shared prefix the provider's
            cache holds when the request is sent (every request after the first of its group).
        cache_write_tokens: The part of ``prompt_tokens`` that writes a prefix to the cache (the
            first request of each group of questions).
    """

    submissions: int
    requests: int
    prompt_tokens: int
    image_tokens: int
    max_completion_tokens: int
    unplanned_items: int
    unplanned_reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def usd(self, price_in: float, price_out: float, factor: float = 1.0, *, cache_read: float | None = None,
            cache_write: float | None = None) -> tuple[float, float]:
        """``(prompt cost, the most the output can cost)`` in USD at per-million-token prices × ``factor``.

        With ``cache_read`` (USD per million cached prompt tokens) the prompt is priced with the
        cache: ``cache_read_tokens`` at that price, ``cache_write_tokens`` at ``cache_write``
        (``None``: the input price), the rest at ``price_in``; without it, all at ``price_in``.
        """
        prompt = self.prompt_tokens * price_in
        if cache_read is not None:
            write = price_in if cache_write is None else cache_write
            prompt += self.cache_read_tokens * (cache_read - price_in) + self.cache_write_tokens * (write - price_in)
        return prompt / 1e6 * factor, self.max_completion_tokens / 1e6 * price_out * factor

    def as_dict(self, price_in: float, price_out: float, factor: float, *, cache_read: float | None = None,
                cache_write: float | None = None) -> dict[str, Any]:
        """The figures and the cost, synchronous and batch (USD; the output part at most); with a
        cache price also ``usd_sync_cached``/``usd_batch_cached`` (the prefix read from the cache)."""
        def cost(*usd: float) -> dict[str, float]:
            return {"prompt": usd[0], "completion_at_most": usd[1], "total_at_most": sum(usd)}

        out = {**dataclasses.asdict(self), "price_per_mtok_input_usd": price_in,
               "price_per_mtok_output_usd": price_out, "batch_price_factor": factor,
               "price_per_mtok_cache_read_usd": cache_read, "price_per_mtok_cache_write_usd": cache_write,
               "usd_sync": cost(*self.usd(price_in, price_out)),
               "usd_batch": cost(*self.usd(price_in, price_out, factor))}
        if cache_read is not None:
            out["usd_sync_cached"] = cost(*self.usd(price_in, price_out, cache_read=cache_read,
                                                    cache_write=cache_write))
            out["usd_batch_cached"] = cost(*self.usd(price_in, price_out, factor, cache_read=cache_read,
                                                     cache_write=cache_write))
        return out


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
    cached: set[tuple] = set()  # groups of questions whose prefix a request has written to the cache
    for k in range(0, len(rows), cfg.submissions_per_block):
        batches, _, errors = asyncio.run(blocks.plan_rows(rows[k:k + cfg.submissions_per_block]))
        out.requests += len(batches)
        for b in batches:
            prefix = b.prefix_tokens_estimate - JSON_OVERHEAD_TOKENS
            if prefix >= cfg.provider.prompt_cache_min_tokens:
                group = (tuple(q.id for q in b.questions), b.model, b.include_model_answer_images)
                if group in cached:
                    out.cache_read_tokens += prefix
                else:
                    out.cache_write_tokens += prefix
                    cached.add(group)
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


def table(est: Estimate, price_in: float, price_out: float, factor: float, *, cache_read: float | None = None,
          cache_write: float | None = None) -> str:
    """The estimate as a Markdown table: requests, tokens and USD, synchronous vs batch, and with
    a cache price also both with the shared prefix read from the provider's cache."""
    d = est.as_dict(price_in, price_out, factor, cache_read=cache_read, cache_write=cache_write)
    cols = ["usd_sync", "usd_batch"] + (["usd_sync_cached", "usd_batch_cached"] if cache_read is not None else [])
    names = {"usd_sync": "USD sync", "usd_batch": "USD batch", "usd_sync_cached": "USD sync, cached",
             "usd_batch_cached": "USD batch, cached"}

    def row(label: str, tokens: int, part: str) -> str:
        return f"| {label} | {tokens:,} | " + " | ".join(f"{d[c][part]:.4f}" for c in cols) + " |"

    prices = f"prices: {price_in} / {price_out} USD per million input / output tokens; batch x{factor}"
    if cache_read is not None:
        prices += f"; cache read {cache_read}, cache write {price_in if cache_write is None else cache_write}"
    return "\n".join([
        f"{est.submissions} submissions -> {est.requests} requests ({est.unplanned_items} items unplanned)",
        "",
        "| | tokens | " + " | ".join(names[c] for c in cols) + " |",
        "|---|---:|" + "---:|" * len(cols),
        row(f"prompt (images {est.image_tokens:,}; cache reads {est.cache_read_tokens:,}, writes "
            f"{est.cache_write_tokens:,})", est.prompt_tokens, "prompt"),
        row("completion, at most", est.max_completion_tokens, "completion_at_most"),
        row("total, at most", est.prompt_tokens + est.max_completion_tokens, "total_at_most"),
        "",
        prices])


def report(est: Estimate, provider: ProviderConfig, price_in: float | None = None, price_out: float | None = None,
           factor: float = 0.5, *, as_json: bool = False) -> tuple[str, list[str]]:
    """What ``raygrade estimate`` prints: the :func:`table` (or :meth:`Estimate.as_dict` as JSON)
    at the provider's prices (``price_in``/``price_out`` override its input and output prices;
    its cache prices as configured), and warnings: items that cannot be planned, a hosted model
    without a price (its USD figures then leave that part out), and more requests than the
    provider's requests per day (``rate_limit.rpd``)."""
    p_in = price_in if price_in is not None else provider.price_per_mtok_input_usd
    p_out = price_out if price_out is not None else provider.price_per_mtok_output_usd
    warnings = [f"{n} items cannot be graded: {reason}" for reason, n in est.unplanned_reasons.items()]
    if provider.traits.hosted and not (p_in and p_out):
        warnings.append(f"no price for {provider.model!r} (input {p_in}, output {p_out} USD per million tokens): "
                        "the USD figures leave it out; give --price-in/--price-out or the provider's "
                        "price_per_mtok_input_usd/price_per_mtok_output_usd")
    if (rpd := provider.rate_limit.rpd) is not None and est.requests > rpd:
        warnings.append(f"{est.requests} requests are more than the provider's {rpd} a day (rate_limit.rpd): the "
                        f"run spans {-(-est.requests // rpd)} quota days; requests past a day's quota wait for its "
                        "reset within rate_limit_patience_s, else their items fail as quota_exhausted")
    cache = {"cache_read": provider.price_per_mtok_cache_read_usd,
             "cache_write": provider.price_per_mtok_cache_write_usd}
    if as_json:
        return json.dumps(est.as_dict(p_in, p_out, factor, **cache), indent=2), warnings
    return table(est, p_in, p_out, factor, **cache), warnings


def review_forecast_line(args: RaygradeArgs, value: float) -> str:
    """One line: the share of items an exact review target of ``value`` is expected to flag, from
    the confidences of the recent jobs graded by ``args.provider``'s model in ``args``' store and
    namespace (:meth:`raygrade.store.JobStore.review_forecast`), or why there is no forecast.

    Raises:
        ValueError: ``value`` outside (0, 1].
    """
    from raygrade.protocol import ReviewTarget
    from raygrade.store import JobStore
    from raygrade.store.forecast import MIN_HISTORY
    from raygrade.store.schema import check_store_url

    url, model = args.store.resolved_url(), args.provider.model
    try:
        parsed = check_store_url(url, must_exist=True)
    except ConfigError:
        parsed = None
    if parsed is None or (parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").exists()):
        return f"review target exact >= {value:g}: no forecast (no job store at {args.store.url or 'the default'})"
    store = JobStore(url, blob_uri=args.store.resolved_blob_uri())
    try:
        plan = store.review_forecast(args.namespace, model, ReviewTarget(value=value))
    finally:
        store.close()
    if plan is None:
        return (f"review target exact >= {value:g}: no forecast (fewer than {MIN_HISTORY} graded items of model "
                f"{model!r} in namespace {args.namespace!r})")
    return (f"review target exact >= {value:g}: expected to flag {plan.share:.1%} of the items (expected exact "
            f"{plan.expected:.3f}), from the confidences of {plan.history_items} graded items of model {model!r}")

