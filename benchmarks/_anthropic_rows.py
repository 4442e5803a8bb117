"""Anthropic rows of ``benchmarks/rate_limit.py --matrix``: the same workload against the fake
Messages API (``raygrade.testing.fake_anthropic``, a separate process), whose limits are token
buckets refilled continuously, with input tokens/min and output tokens/min apart (output charged
at ``max_tokens`` on arrival and settled to the real output), counting text its own way (one
token per 3.5 characters; raygrade estimates with tiktoken) and images by Claude's rule.

Systems, each against its own fresh fake:

- **raygrade**: the Serve app with ``kind: anthropic`` (the official SDK), 4 Grader replicas and
  a concurrent bulk regrade, ``rate_limit`` with the provider's documented ``rpm``/``itpm``/``otpm``;
- **asyncio**: ``anthropic.AsyncAnthropic`` (its default 2 retries, honouring ``retry-after``)
  under a semaphore of 4 × 16, the same Messages bodies raygrade's provider builds;
- **litellm**: 4 ``litellm.Router`` workers, model ``anthropic/…``, ``rpm`` and ``tpm`` (LiteLLM
  has no separate input/output limits: ``tpm`` is the binding one).

Per system, from the fake's log: 429s, failed requests, and the use of the binding limit in every
full minute from the first request (admissions bucketed by minute: uncached input tokens ÷ ITPM or
output tokens ÷ OTPM).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from _peers import run_litellm

from raygrade.config import ProviderConfig, RateLimitConfig
from raygrade.prompts import build_messages, output_schema
from raygrade.providers.anthropic_messages import messages_request
from raygrade.providers.base import ChatRequest
from raygrade.testing.fake_anthropic import FakeAnthropicProcess, FakeAnthropicServer, MessageRecord, answer
from raygrade.testing.fake_anthropic import text_tokens as fake_text_tokens

#: Matrix rows: the binding bucket.
ROWS: dict[str, dict] = {
    "anthropic-itpm": {"binding": "itpm", "api": "anthropic"},
    "anthropic-otpm": {"binding": "otpm", "api": "anthropic"},
}
#: Limits that do not bind are this many times what the workload needs per minute.
SLACK = 10


def provider_config(base_url: str, rpm: int, itpm: int, otpm: int) -> ProviderConfig:
    """``kind: anthropic`` at the fake, with the limits the provider documents for the key."""
    return ProviderConfig(name="claude-bench", kind="anthropic", base_url=base_url, api_key_env="RAYGRADE_FAKE_KEY",
                          model="claude-fake", image_token_rule="claude", context_window=16_000,
                          max_completion_tokens=4_000, max_retries=3, rate_limit=RateLimitConfig(
                              rpm=rpm, itpm=itpm, otpm=otpm, rejected_requests_count=False))


def bodies(batches: list, schema_bounds: bool) -> list[dict[str, Any]]:
    """The Messages bodies raygrade's Anthropic provider sends for ``batches``."""
    cfg = provider_config("http://127.0.0.1:1", 1, 1, 1)
    return [messages_request(cfg, ChatRequest(build_messages(b.questions, b.students), max_tokens=b.max_tokens,
                                              temperature=0.0, json_schema=output_schema(
                                                  b.questions, b.students, bounds=schema_bounds)))
            for b in batches]


def provider_counts(payloads: list[dict[str, Any]]) -> tuple[float, float]:
    """Mean (uncached input tokens, output tokens) per request by the fake's own count (the
    prefix read from the cache after its first request where it is cacheable)."""
    srv = FakeAnthropicServer()  # not started: its counting rules only
    seen: set[str] = set()
    inp = out = 0
    for body in payloads:
        prefix, rest = srv._count(body)
        key = json.dumps([body.get("tools"), body.get("system")])
        hit = prefix >= srv.min_cache_tokens and key in seen
        seen.add(key)
        inp += rest + (0 if hit else prefix)
        content, _ = answer(body)
        out += min(body["max_tokens"], fake_text_tokens(json.dumps(content)))
    return inp / len(payloads), out / len(payloads)


def run_asyncio(payloads: list[dict[str, Any]], base_url: str, a: argparse.Namespace) -> dict:
    import anthropic

    async def main() -> int:
        client = anthropic.AsyncAnthropic(base_url=base_url, api_key="sk-test")  # default: 2 retries
        sem = asyncio.Semaphore(a.workers * a.per_worker_concurrency)
        failed = 0

        async def one(p: dict[str, Any]) -> None:
            nonlocal failed
            async with sem:
                try:
                    await client.messages.create(**p)
                except anthropic.APIError:
                    failed += 1

        await asyncio.wait_for(asyncio.gather(*(one(p) for p in payloads)), a.max_wall_s)
        return failed

    try:
        return {"failed_requests": asyncio.run(main()), "stopped": False}
    except TimeoutError:
        return {"failed_requests": None, "stopped": True}


def per_minute(log: list[MessageRecord], binding: str, limit: int) -> list[float]:
    """Use of the binding bucket's per-minute rate in each full minute from the first request to
    the last admission (admissions bucketed by minute; the fake's own counts)."""
    ok = [r for r in log if r.status == 200]
    if not ok:
        return []
    t0, t_last = min(r.admitted for r in log), max(r.admitted for r in ok)
    out = []
    for k in range(int((t_last - t0) // 60)):
        rows = [r for r in ok if t0 + 60 * k <= r.admitted < t0 + 60 * (k + 1)]
        used = sum(r.input_tokens if binding == "itpm" else r.output_tokens for r in rows)
        out.append(used / limit)
    return out


def run_row(row: str, w: dict, a: argparse.Namespace, systems: list[str], run_raygrade) -> dict:
    """One Anthropic row: limits sized so the workload takes ``--row-minutes`` at the binding bucket."""
    spec = ROWS[row]
    payloads = bodies(w["batches"], w["args"].provider.schema_bounds)
    inp, out = provider_counts(payloads)
    rate = len(payloads) / a.row_minutes  # requests per minute
    a.rpm = round(rate * SLACK)
    itpm = round(rate * inp * (1 if spec["binding"] == "itpm" else SLACK))
    otpm = round(rate * out * (1 if spec["binding"] == "otpm" else SLACK))
    binding_limit = itpm if spec["binding"] == "itpm" else otpm
    print(f"=== row {row}: RPM {a.rpm}, ITPM {itpm}, OTPM {otpm} (fake's count per request: {inp:.0f} in, "
          f"{out:.0f} out; max_tokens {sum(p['max_tokens'] for p in payloads) / len(payloads):.0f})", flush=True)
    results: dict = {}
    for name in systems:
        srv = FakeAnthropicProcess(rpm=a.rpm, input_tpm=itpm, output_tpm=otpm, latency_s=a.latency_s)
        print(f"== {name} ...", flush=True)
        try:
            if name == "raygrade":
                args = w["args"].model_copy(update={"provider": provider_config(srv.base_url, a.rpm, itpm, otpm)})
                extra = run_raygrade(w["assessment"], w["interactive"], w["bulk_batches"], args, a)
            elif name == "litellm":
                extra = run_litellm(w["payload_file"], srv.base_url, a, rpm=a.rpm, tpm=binding_limit,
                                    model="anthropic/claude-fake")
            elif name == "asyncio":
                extra = run_asyncio(payloads, srv.base_url, a)
            else:
                print(f"   ({name} has no Anthropic client here: left out)", flush=True)
                continue
            log = srv.log()
        finally:
            srv.stop()
        minutes = per_minute(log, spec["binding"], binding_limit)
        sent = len(log)
        rejected = sum(r.status == 429 for r in log)
        results[name] = {"requests_sent": sent, "answered_200": sum(r.status == 200 for r in log),
                         "rejected_429": rejected, "rejected_429_share": rejected / max(1, sent),
                         "unanswered": len(payloads) - sum(r.status == 200 for r in log),
                         "rejected_at_s": [round(r.admitted - min(x.admitted for x in log), 2)
                                           for r in log if r.status == 429],
                         "per_minute_use": minutes, "min_full_minute_use": min(minutes) if minutes else None,
                         "mean_full_minute_use": sum(minutes) / len(minutes) if minutes else None,
                         "cache_read_tokens": sum(r.cache_read for r in log), **extra}
        print(json.dumps({k: v for k, v in results[name].items() if k != "rejected_at_s"}), flush=True)
    return {"rpm": a.rpm, "itpm": itpm, "otpm": otpm, "tpm": binding_limit, **spec,
            "provider": {"fake": "anthropic", "text_chars_per_token": 3.5}, "systems": results}


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run through benchmarks/rate_limit.py --matrix --rows anthropic-itpm,anthropic-otpm")
