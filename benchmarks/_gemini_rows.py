"""The Gemini row of ``benchmarks/rate_limit.py --matrix``: requests per day running out mid-run,
then the day's reset, against the fake Gemini API (``raygrade.testing.fake_gemini``, a separate
process: RPM and input tokens/min over a sliding minute, requests per day counted per calendar day,
429 ``RESOURCE_EXHAUSTED`` with the wait only in ``RetryInfo`` and the quota in ``QuotaFailure``).

A real day is 24 hours: here the quota's day is that of a fixed-offset time zone whose midnight
falls ``--rpd-reset-after-s`` seconds into each system's run (``rate_limit.rpd_reset_zone:
UTC+HH:MM:SS`` for raygrade, the fake's ``--day-zone``: both count the same calendar day). The
per-day quota is 60 % of the workload's requests (the day runs out mid-run, the next day has room
for the rest); RPM is sized so the workload takes ``--row-minutes`` without it.

Systems: **raygrade** (``kind: gemini`` through the official ``google-genai`` SDK, 4 Grader
replicas and a bulk regrade; ``rate_limit`` with the provider's ``rpm``, ``itpm`` and ``rpd``: once
the day is spent, queued calls wait for the reset within ``rate_limit_patience_s``, 900 s),
**asyncio** (``google-genai``'s async client with 3 attempts, under a semaphore of 4 × 16) and
**litellm** (4 Router workers, model ``gemini/…``, ``rpm`` and ``tpm``: it has no per-day limit).

Reported per system: 429s by quota, failed requests or items, when the day ran out and how long
after the reset the first request went, and the use of RPM in every full minute in which the day's
quota was open throughout (the rule allows nothing while it is spent).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import time
from typing import Any

from _peers import run_litellm

from raygrade.config import ProviderConfig, RateLimitConfig
from raygrade.prompts import build_messages, output_schema
from raygrade.providers.base import ChatRequest
from raygrade.testing.fake_gemini import PER_DAY_QUOTA, FakeGeminiProcess, GenerateRecord, zone_with_midnight_at

ROWS: dict[str, dict] = {"gemini-rpd": {"binding": "rpd", "api": "gemini"}}
#: Share of the workload's requests the day allows.
DAY_SHARE = 0.6
SLACK = 10


def provider_config(base_url: str, rpm: int, itpm: int, rpd: int, zone: str) -> ProviderConfig:
    """``kind: gemini`` at the fake, with the provider's limits and its day's zone."""
    return ProviderConfig(name="gemini-bench", kind="gemini", base_url=base_url, api_key_env="RAYGRADE_FAKE_KEY",
                          model="gemini-fake", image_token_rule="gemini", context_window=16_000,
                          max_completion_tokens=4_000, max_retries=3, rate_limit=RateLimitConfig(
                              rpm=rpm, itpm=itpm, rpd=rpd, rpd_reset_zone=zone, rejected_requests_count=False))


def requests(batches: list, schema_bounds: bool) -> list[ChatRequest]:
    return [ChatRequest(build_messages(b.questions, b.students), max_tokens=b.max_tokens, temperature=0.0,
                        json_schema=output_schema(b.questions, b.students, bounds=schema_bounds)) for b in batches]


def run_asyncio(reqs: list[ChatRequest], cfg: ProviderConfig, a: argparse.Namespace) -> dict:
    from google import genai
    from google.genai import errors, types

    from raygrade.providers.gemini import generate_request

    async def main() -> int:
        client = genai.Client(api_key="sk-test", http_options=types.HttpOptions(
            base_url=cfg.base_url, retry_options=types.HttpRetryOptions(attempts=3)))
        sem = asyncio.Semaphore(a.workers * a.per_worker_concurrency)
        failed = 0

        async def one(r: ChatRequest) -> None:
            nonlocal failed
            async with sem:
                try:
                    await client.aio.models.generate_content(**generate_request(cfg, r))
                except errors.APIError:
                    failed += 1

        await asyncio.wait_for(asyncio.gather(*(one(r) for r in reqs)), a.max_wall_s)
        return failed

    try:
        return {"failed_requests": asyncio.run(main()), "stopped": False}
    except TimeoutError:
        return {"failed_requests": None, "stopped": True}


def day_metrics(log: list[GenerateRecord], rpm: int, rpd: int, reset_mono: float) -> dict[str, Any]:
    """When the day ran out, the first admission after its reset, and RPM use in every full minute
    (from the first request) in which the day was open throughout."""
    ok = sorted((r for r in log if r.status == 200), key=lambda r: r.admitted)
    if not ok:
        return {"per_minute_use": [], "open_minutes": []}
    t0 = min(r.admitted for r in log)
    spent_at = ok[rpd - 1].admitted if len(ok) >= rpd else None
    after = [r.admitted for r in ok if r.admitted >= reset_mono]
    minutes, open_ = [], []
    for k in range(int((ok[-1].admitted - t0) // 60)):
        lo, hi = t0 + 60 * k, t0 + 60 * (k + 1)
        minutes.append(sum(1 for r in ok if lo <= r.admitted < hi) / rpm)
        if spent_at is None or hi <= spent_at or lo >= reset_mono:
            open_.append(k)
    return {"day_spent_at_s": None if spent_at is None else round(spent_at - t0, 1),
            "day_reset_at_s": round(reset_mono - t0, 1),
            "first_after_reset_s": round(after[0] - reset_mono, 2) if after else None,
            "per_minute_use": minutes, "open_minutes": open_,
            "min_open_minute_use": min((minutes[k] for k in open_), default=None),
            "rejected_per_day": sum(1 for r in log if r.status == 429 and r.quota == PER_DAY_QUOTA),
            "rejected_per_minute": sum(1 for r in log if r.status == 429 and r.quota != PER_DAY_QUOTA)}


def run_row(row: str, w: dict, a: argparse.Namespace, systems: list[str], run_raygrade) -> dict:
    """The Gemini row: RPM sized for ``--row-minutes``, the day's quota 60 % of the requests."""
    reqs = requests(w["batches"], w["args"].provider.schema_bounds)
    n = len(reqs)
    a.rpm = round(n / a.row_minutes)
    rpd = round(n * DAY_SHARE)
    itpm = round(a.rpm * w["prompt"] * 3 * SLACK)  # never binding (the fake counts text its own way)
    print(f"=== row {row}: RPM {a.rpm}, RPD {rpd} of {n} requests, input TPM {itpm}; the day resets "
          f"{a.rpd_reset_after_s:.0f} s into each run", flush=True)
    results: dict = {}
    for name in systems:
        if name not in ("raygrade", "asyncio", "litellm"):
            print(f"   ({name} has no Gemini client here: left out)", flush=True)
            continue
        reset_wall = time.time() + a.rpd_reset_after_s
        zone = zone_with_midnight_at(reset_wall)
        reset_mono = time.monotonic() + a.rpd_reset_after_s
        srv = FakeGeminiProcess(rpm=a.rpm, input_tpm=itpm, rpd=rpd, latency_s=a.latency_s, day_zone=zone)
        cfg = provider_config(srv.base_url, a.rpm, itpm, rpd, zone)
        print(f"== {name} (day zone {zone}: midnight at {dt.datetime.fromtimestamp(reset_wall, dt.UTC):%H:%M:%S} "
              "UTC) ...", flush=True)
        try:
            if name == "raygrade":
                extra = run_raygrade(w["assessment"], w["interactive"], w["bulk_batches"],
                                     w["args"].model_copy(update={"provider": cfg}), a)
            elif name == "litellm":  # its Router has rpm and tpm, no requests per day
                extra = run_litellm(w["payload_file"], f"{srv.base_url}/v1beta", a, rpm=a.rpm, tpm=itpm,
                                    model="gemini/gemini-fake")
            else:
                extra = run_asyncio(reqs, cfg, a)
            log = srv.log()
        finally:
            srv.stop()
        sent = len(log)
        rejected = sum(r.status == 429 for r in log)
        answered = sum(r.status == 200 for r in log)
        m = day_metrics(log, a.rpm, rpd, reset_mono)
        results[name] = {"requests_sent": sent, "answered_200": answered, "rejected_429": rejected,
                         "rejected_429_share": rejected / max(1, sent), "unanswered": n - answered, **m, **extra}
        print(json.dumps(results[name]), flush=True)
    return {"rpm": a.rpm, "rpd": rpd, "itpm": itpm, "tpm": rpd, **ROWS[row], "systems": results}
