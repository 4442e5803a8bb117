"""Rate-limit benchmark: raygrade's shared limiter vs LiteLLM's Router, Ray Data's HTTP
request processor and a plain asyncio + semaphore client, on one workload, one run.

Every system sends the same grading requests (students' handwriting-style page
images packed by raygrade's planner, GPT-4o image tokens, JSON-schema output,
``max_tokens`` from the planner) to its own fresh instance of the rate-limited
OpenAI-compatible test server (``raygrade.testing.fake_openai``, a separate process,
sliding 60-s RPM/TPM window, input + ``max_tokens`` charged up front and refunded to
actual usage on completion, fixed + per-token latency). Each system gets the
provider's limits through its own native knobs:

- **raygrade**: the Serve app with 4 Grader replicas, interactive jobs over HTTP, plus
  a concurrent Ray Data bulk regrade (``raygrade.bulk.udf.BatchGradingUDF``, 2 actors) at
  ``bulk`` priority; all share the token-bucket actor.
- **litellm**: 4 worker processes, each with a ``litellm.Router`` whose deployment has
  ``rpm``/``tpm`` (usage-based-routing-v2, pre-call checks, 3 retries), installed in its
  own virtualenv (``--litellm-python``; LiteLLM pins an older openai than raygrade).
- **ray-data**: ``ray.data.llm`` ``HttpRequestProcessorConfig`` with 4 actors, ``qps``
  per actor = the binding limit's request rate ÷ 4 (it counts no tokens), 3 retries.
- **asyncio**: one ``AsyncOpenAI`` client (its default 2 retries, honouring
  ``Retry-After``) under a semaphore of 4 × 16.

Per system, from the server's audit log: utilisation (tokens counted in each 60-s
window inside the run ÷ TPM: mean and max), requests answered 429 (share of all
requests sent), failed requests (never answered 200), wall time and wall time ÷ the
theoretical minimum (total tokens ÷ TPM), and vLLM's ``request_throughput`` /
``output_throughput`` (benchmarks/_serving_metrics.py). One table on stdout, JSON and a PNG plot
under ``--out``. A system still running after ``--max-wall-s`` is stopped; its
unfinished requests count as failed.

Run (≈ 15 min on 2 cores): ``.venv/bin/python benchmarks/rate_limit.py``

**Matrix** (``--matrix``, ≈ 1 h with the peers): the same systems against providers that
disagree with raygrade, one row each, every row sized to last ``--row-minutes`` at its
binding limit (limits derived from the workload):

- ``tpm``: TPM binding, the provider counts like raygrade, no ``openai-processing-ms``;
- ``rpm``: RPM binding, otherwise as ``tpm``;
- ``tpm-4x``: TPM binding, the provider counts every prompt 4× raygrade's estimate (as a
  provider whose image rule raygrade does not know);
- ``tpm-delay2s``: TPM binding, every request waits 2 s between the grant and leaving
  (``RAYGRADE_FAULT_SEND_DELAY_S``, as on an overloaded node; the peers sleep 2 s before
  each call);
- ``tpm-per10s``: TPM binding, the provider enforces its per-minute limit pro rata over any 10 s
  (TPM/6 per 10 s, as OpenAI may enforce a limit over shorter periods) while its headers and
  everyone's configuration give the documented per-minute limits: bursts draw 429s; raygrade
  learns a 10-s short window from the first (``--short-window-s 10`` configures it instead, as for
  a provider that documents its rule; ``--burst-s off`` for the limiter before smooth admission).
  No client reaches the TPM under such a rule (a request's part that does not fit at each 10-s
  boundary, and the up-front charges of calls in flight, are a larger share of 10 s than of a
  minute), so the row also prints what the rule allows: the use per minute of a client that knows
  it exactly and sends each request the moment it fits (:func:`rule_allows`);
- ``anthropic-itpm`` / ``anthropic-otpm``: the fake Messages API (continuously refilled buckets,
  input and output tokens apart, its own text count), input or output tokens/min binding
  (``benchmarks/_anthropic_rows.py``; systems raygrade, asyncio with the ``anthropic`` SDK, LiteLLM);
- ``gemini-rpd``: the fake Gemini API, requests per day running out mid-run and the day's reset
  (``benchmarks/_gemini_rows.py``; raygrade and asyncio with ``google-genai``).

None of these providers charges rejected requests (``count_rejected`` off, the audit's
provider), and raygrade is configured so (``rate_limit.rejected_requests_count: false``).
Per row and system: 429s (share of sent, and when they fell), failed items, mean use of the
binding limit, and the minimum over every *full* minute from the first request (per-minute
buckets of admissions: tokens ÷ TPM or requests ÷ RPM).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAYGRADE_FAKE_KEY", "sk-test")

from _anthropic_rows import ROWS as ANTHROPIC_ROWS  # noqa: E402  (benchmarks/, the script's own folder)
from _anthropic_rows import run_row as run_anthropic_row  # noqa: E402
from _gemini_rows import ROWS as GEMINI_ROWS  # noqa: E402
from _gemini_rows import run_row as run_gemini_row  # noqa: E402
from _peers import litellm_missing, run_litellm  # noqa: E402
from _serving_metrics import serving_throughput  # noqa: E402

from raygrade.batch import GradeBatch  # noqa: E402
from raygrade.config import ApiConfig, BatcherConfig, RateLimitConfig, RaygradeArgs  # noqa: E402
from raygrade.prompts import build_messages, output_schema  # noqa: E402
from raygrade.protocol import Assessment, GradingJob, ImagePage, Submission  # noqa: E402
from raygrade.testing.fake_openai import FakeOpenAIProcess, RequestRecord, fake_provider_config  # noqa: E402
from raygrade.testing.ports import free_port  # noqa: E402

SYSTEMS = ("raygrade", "litellm", "ray-data", "asyncio")
#: Matrix rows: binding limit, the provider's options (FakeOpenAIProcess), client-side send delay.
ROWS: dict[str, dict] = {
    "tpm": {"binding": "tpm", "provider": {}, "send_delay_s": 0.0},
    "rpm": {"binding": "rpm", "provider": {}, "send_delay_s": 0.0},
    "tpm-4x": {"binding": "tpm", "provider": {"prompt_token_multiplier": 4.0}, "send_delay_s": 0.0},
    "tpm-delay2s": {"binding": "tpm", "provider": {}, "send_delay_s": 2.0},
    "tpm-per10s": {"binding": "tpm", "provider": {"window_s": 10.0, "minute_headers": True}, "send_delay_s": 0.0},
    **ANTHROPIC_ROWS,  # the fake Messages API's token buckets (benchmarks/_anthropic_rows.py)
    **GEMINI_ROWS,  # the fake Gemini API's requests per day (benchmarks/_gemini_rows.py)
}


# -- workload -------------------------------------------------------------------------------
def make_workload(n_students: int, seed: int = 0) -> tuple[Assessment, list[Submission]]:
    """``n_students`` one-page handwriting-style answers to two questions (12 distinct pages)."""
    import base64

    from raygrade.datasets.render import render_pages

    data = json.loads((ROOT / "raygrade/data/sample_assessment.json").read_text())
    assessment = Assessment(title=data["title"], questions=data["questions"][:2])
    answers = [
        "TCP uses a three-way handshake so both sides agree on initial sequence numbers before data flows.",
        "The receiver window limits how much unacknowledged data the sender may have in flight.",
        "UDP has no retransmission, no ordering and no congestion control, so it is faster but unreliable.",
        "Slow start doubles the congestion window every round trip until loss or the threshold is reached.",
    ]
    pages = [base64.b64encode(render_pages(" ".join(answers[i % 4:] + answers[:i % 4]), seed=i)[0]).decode()
             for i in range(12)]
    subs = [Submission(student_id=f"student-{i:05d}", pages=[ImagePage(data=pages[i % len(pages)])])
            for i in range(n_students)]
    return assessment, subs


def plan(args: RaygradeArgs, job_id: str, job: GradingJob) -> list[GradeBatch]:
    """The batches raygrade's batcher makes of ``job`` (same planner, same counter)."""
    from raygrade.planner import JobPlanner
    from raygrade.prompts import StudentWork
    from raygrade.tokens import counter_for

    planner = JobPlanner(args, counter_for(args.provider))
    works = [StudentWork(student_id=s.student_id, alias=f"s{i + 1}", pages=list(s.pages),
                         page_indices=list(range(len(s.pages))), question_ids=[q.id for q in job.questions_for(s)])
             for i, s in enumerate(job.submissions)]
    batches, errors = planner.batches(job_id, job, works, vision=True)
    assert not errors, errors
    return batches


def payload(b: GradeBatch, schema_bounds: bool) -> dict:
    """The chat-completions body raygrade's grader sends for batch ``b``."""
    return {"model": "fake-grader", "messages": build_messages(b.questions, b.students),
            "max_tokens": b.max_tokens, "temperature": 0.0,
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "grades", "schema": output_schema(b.questions, b.students, bounds=schema_bounds),
                "strict": True}}}


# -- systems --------------------------------------------------------------------------------
def run_asyncio(payloads: list[dict], base_url: str, a: argparse.Namespace) -> dict:
    import openai

    async def main():
        client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-test")  # default: 2 retries
        sem = asyncio.Semaphore(a.workers * a.per_worker_concurrency)
        failed = 0

        async def one(p):
            nonlocal failed
            async with sem:
                await asyncio.sleep(a.send_delay_s)  # the matrix's client-side delay (0 otherwise)
                try:
                    await client.chat.completions.create(**p)
                except openai.OpenAIError:
                    failed += 1

        await asyncio.wait_for(asyncio.gather(*(one(p) for p in payloads)), a.max_wall_s)
        return failed

    try:
        failed = asyncio.run(main())
        return {"failed_requests": failed, "stopped": False}
    except TimeoutError:
        return {"failed_requests": None, "stopped": True}


def run_ray_data(payload_file: Path, base_url: str, a: argparse.Namespace, charge: float) -> dict:
    """Ray Data LLM's HTTP processor, in a child driver so it can be stopped at the deadline."""
    qps = max(1, round(min(a.rpm / 60, a.tpm / charge / 60) / a.workers))
    cmd = [sys.executable, __file__, "--run-ray-data", str(payload_file), base_url, str(qps), str(a.workers)]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=a.max_wall_s + 60)
        last = out.strip().splitlines()[-1] if out.strip() else "{}"
        res = json.loads(last) if last.startswith("{") else {"error": last}
        return {"failed_requests": res.get("failed"), "stopped": False, "qps_per_actor": qps,
                **({"aborted": res["aborted"]} if res.get("aborted") else {})}
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        return {"failed_requests": None, "stopped": True, "qps_per_actor": qps}


def ray_data_child(payload_file: str, base_url: str, qps: int, workers: int) -> None:
    import ray
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows = [{"payload_json": line} for line in Path(payload_file).read_text().splitlines()]
    config = HttpRequestProcessorConfig(url=f"{base_url}/chat/completions", headers={"Authorization": "Bearer sk-test"},
                                        qps=qps, concurrency=workers, batch_size=16, max_retries=3)
    proc = build_processor(config, preprocess=lambda r: {"payload": json.loads(r["payload_json"])},
                           postprocess=lambda r: {"ok": bool(r.get("http_response", {}).get("choices"))})
    ds = ray.data.from_items(rows).repartition(workers * 4)
    try:
        out = proc(ds).take_all()
        print(json.dumps({"failed": sum(1 for r in out if not r["ok"]) + len(rows) - len(out)}), flush=True)
    except Exception as exc:  # Ray Data fails the whole dataset when one row runs out of retries
        print(json.dumps({"failed": None, "aborted": type(exc).__name__}), flush=True)


def run_raygrade(assessment: Assessment, interactive: list[list[Submission]], bulk_batches: list[GradeBatch],
                 args: RaygradeArgs, a: argparse.Namespace) -> dict:
    import ray
    from ray import serve
    from ray.data import ActorPoolStrategy

    from raygrade.app import build_app
    from raygrade.bulk.udf import BatchGradingUDF
    from raygrade.providers.openai_compat import SEND_DELAY_ENV

    # Every grader replica and bulk actor inherits the job's environment: the matrix's send delay.
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False,
             namespace=args.namespace, runtime_env={"env_vars": {SEND_DELAY_ENV: str(a.send_delay_s)}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    serve.run(build_app(args.model_copy(update={"deployment_options": {"Grader": {"autoscaling_config": {
        "min_replicas": a.workers, "max_replicas": a.workers, "target_ongoing_requests": 8}}}})),
        name="bench", route_prefix="/bench")
    url = f"http://127.0.0.1:{port}/bench"
    bulk_result: dict = {}

    def bulk() -> None:
        ds = ray.data.from_items([{"batch": b.model_dump_json()} for b in bulk_batches]).repartition(16)
        try:
            rows = ds.map_batches(BatchGradingUDF, fn_constructor_kwargs={
                "provider": args.provider.model_dump(), "namespace": args.namespace},
                compute=ActorPoolStrategy(size=2), batch_size=8, num_cpus=0.5).take_all()
        except Exception as exc:
            bulk_result["error"] = type(exc).__name__
            bulk_result["failed_requests"] = sum(len(b.students) * len(b.questions) for b in bulk_batches)
            return
        bulk_result["failed_requests"] = sum(len(json.loads(r["errors"])) for r in rows)
        bulk_result["rows"] = len(rows)

    t = threading.Thread(target=bulk, daemon=True)
    t.start()
    failed = 0
    with httpx.Client(timeout=120) as client:
        jobs = []
        for subs in interactive:
            job = GradingJob(assessment=assessment, submissions=subs)
            r = client.post(f"{url}/v1/jobs", json=job.model_dump(mode="json"))
            r.raise_for_status()
            jobs.append(r.json()["id"])
        deadline = time.monotonic() + a.max_wall_s
        pending = set(jobs)
        while pending and time.monotonic() < deadline:
            for jid in list(pending):
                st = client.get(f"{url}/v1/jobs/{jid}").json()
                if st["state"] in ("succeeded", "partial", "failed"):
                    pending.discard(jid)
                    failed += sum(len(e["student_ids"]) * len(e["question_ids"]) for e in client.get(
                        f"{url}/v1/jobs/{jid}/results").json().get("errors", []))
            time.sleep(1)
    t.join(max(1, deadline - time.monotonic()))
    stopped = bool(pending) or t.is_alive()
    from raygrade.ratelimit.actor import get_rate_limiter

    # What the limiter learned and did (count ratios, header corrections, 429s seen, admissions).
    limiter = ray.get(get_rate_limiter(args.namespace).snapshot.remote()).get(args.provider.bucket_key, {})
    serve.shutdown()
    ray.shutdown()
    items_failed = failed + bulk_result.get("failed_requests", 0)
    return {"failed_requests": None if stopped else items_failed, "stopped": stopped,
            "bulk": bulk_result, "note": "failed counts items (student x question) for raygrade",
            "limiter": {k: v for k, v in limiter.items() if isinstance(v, (int, float, str)) or v is None}}


# -- metrics --------------------------------------------------------------------------------
def metrics(log: list[RequestRecord], tpm: int, n_requests: int, t_start: float, t_end: float) -> dict:
    ok = [r for r in log if r.status == 200]
    total_tokens = sum(r.final_tokens for r in ok)
    if ok:
        t0 = min(r.mono for r in log)
        t_last = max(r.mono for r in ok)
        starts = [t0 + s for s in range(0, max(1, int(t_last - t0 - 60) + 1))]
        windows = [sum(r.final_tokens for r in ok if s <= r.mono < s + 60) for s in starts] \
            if t_last - t0 >= 60 else []
    else:
        windows = []
    wall = t_end - t_start
    return {
        "requests_sent": len(log), "answered_200": len(ok), "rejected_429": sum(r.status == 429 for r in log),
        "rejected_429_share": sum(r.status == 429 for r in log) / max(1, len(log)),
        "unanswered": n_requests - len(ok),
        "utilisation_mean": (sum(windows) / len(windows) / tpm) if windows else None,
        "utilisation_max": (max(windows) / tpm) if windows else None,
        "tokens": total_tokens, "wall_s": wall, "theoretical_min_s": total_tokens / tpm * 60,
        "wall_over_min": wall / (total_tokens / tpm * 60) if total_tokens else None,
        "tokens_per_10s": _histogram(ok, t_start),
        # when each 429 was answered, seconds after the first request (where in the run they fall)
        "rejected_at_s": [round(r.mono - min(x.mono for x in log), 2) for r in log if r.status == 429],
    }


def _histogram(ok: list[RequestRecord], t_start_wall: float) -> list[int]:
    if not ok:
        return []
    t0 = min(r.t for r in ok)
    bins: dict[int, int] = {}
    for r in ok:
        k = int((r.t - t0) // 10)
        bins[k] = bins.get(k, 0) + r.final_tokens
    return [bins.get(i, 0) for i in range(max(bins) + 1)]


def per_minute(log: list[RequestRecord], binding: str, limit: int) -> list[float]:
    """Use of the binding limit in each full minute from the first request to the last answer.

    Admissions (``mono``) are bucketed by minute since the first request; a bucket counts
    when the run went on to its end. Tokens are the provider's final charge (its own count).
    """
    ok = [r for r in log if r.status == 200]
    if not ok:
        return []
    t0, t_last = min(r.mono for r in log), max(r.mono for r in ok)
    out = []
    for k in range(int((t_last - t0) // 60)):
        rows = [r for r in ok if t0 + 60 * k <= r.mono < t0 + 60 * (k + 1)]
        used = len(rows) if binding == "rpm" else sum(r.final_tokens for r in rows)
        out.append(used / limit)
    return out


def rule_allows(log: list[RequestRecord], tpm: int, window_s: float, latency_s: float,
                latency_per_token_s: float) -> list[float]:
    """What a provider's token rule allows for this run's requests: per full minute, the final tokens
    ÷ TPM of a client that knows the rule exactly and sends each request the moment it fits.

    The rule is the fake's: at most ``tpm·window_s/60`` tokens in any ``window_s`` seconds, a request
    charged its input + ``max_tokens`` when it arrives and settled to its usage when it is answered
    (``latency_s + latency_per_token_s × completion tokens`` later). The requests are the run's
    answered ones, in the order they arrived. Where the window is shorter than the minute, the part of
    a request that does not fit at each boundary and the up-front charges of the calls in flight are
    a larger share of the window: no client reaches the TPM there.
    """
    reqs = sorted((r for r in log if r.status == 200), key=lambda r: r.mono)
    limit, t, live, times = tpm * window_s / 60, 0.0, [], []  # live: (arrived, charge, final, answered)
    for r in reqs:
        while True:
            live = [e for e in live if e[0] + window_s > t]  # the same sum as the expiries below: t advances
            if sum(e[2] if e[3] <= t else e[1] for e in live) + r.charged_tokens <= limit + 1e-9 or not live:
                break
            t = min([e[0] + window_s for e in live] + [e[3] for e in live if e[3] > t])
        live.append((t, r.charged_tokens, r.final_tokens, t + latency_s + latency_per_token_s * r.completion_tokens))
        times.append(t)
    return [sum(r.final_tokens for r, s in zip(reqs, times) if 60 * k <= s < 60 * (k + 1)) / tpm
            for k in range(int(times[-1] // 60))] if times else []


def build(a: argparse.Namespace) -> dict:
    """The workload, planned once: interactive jobs, bulk batches and the request bodies."""
    provider = fake_provider_config("http://127.0.0.1:1/v1", name="bench", rate_limit=RateLimitConfig(
        rpm=a.rpm, tpm=a.tpm), max_retries=3)
    # Neither keys nor the body limit is what this measures: 1,000 scanned students are ≈ 270 MB in one POST.
    args = RaygradeArgs(provider=provider, api=ApiConfig(auth="disabled", max_body_bytes=1 << 30),
                        namespace=f"rg-bench-{uuid.uuid4().hex[:6]}", batcher=BatcherConfig(
        max_students_per_request=a.students_per_request, max_concurrent_batches=a.per_worker_concurrency * 2))
    print(f"building the workload: {a.students} students ...", flush=True)
    assessment, subs = make_workload(a.students)
    n_bulk = int(len(subs) * a.bulk_share)
    bulk_subs, inter_subs = subs[:n_bulk], subs[n_bulk:]
    k = a.interactive_jobs
    interactive = [inter_subs[i::k] for i in range(k)]
    bulk_batches = plan(args, "bulk", GradingJob(assessment=assessment, submissions=bulk_subs)) if bulk_subs else []
    inter_batches = [b for i, s in enumerate(interactive)
                     for b in plan(args, f"job{i}", GradingJob(assessment=assessment, submissions=s))]
    batches = bulk_batches + inter_batches
    payloads = [payload(b, provider.schema_bounds) for b in batches]
    payload_file = a.out / "rate_limit_payloads.jsonl"
    payload_file.write_text("".join(json.dumps(p) + "\n" for p in payloads))
    return {"args": args, "assessment": assessment, "interactive": interactive, "bulk_batches": bulk_batches,
            "batches": batches, "payloads": payloads, "payload_file": payload_file,
            "charge": sum(b.prompt_tokens_estimate + b.max_tokens for b in batches) / len(batches),
            "prompt": sum(b.prompt_tokens_estimate for b in batches) / len(batches)}


def run_systems(w: dict, a: argparse.Namespace, systems: list[str], server_opts: dict,
                binding: str = "tpm") -> dict:
    """Each system against its own fresh server with ``server_opts``; ``{system: metrics}``."""
    out: dict = {}
    # raygrade is told the provider's documented rule for rejected requests (the fake's count_rejected).
    provider = w["args"].provider.model_copy(update={"rate_limit": RateLimitConfig(
        rpm=a.rpm, tpm=a.tpm, rejected_requests_count=bool(server_opts.get("count_rejected", False)),
        short_window_s=a.short_window_s,
        **({} if a.burst_s is None else {"burst_s": None if a.burst_s == "off" else float(a.burst_s)}))})
    for name in systems:
        srv = FakeOpenAIProcess(rpm=a.rpm, tpm=a.tpm, latency_s=a.latency_s,
                                latency_per_token_s=a.latency_per_token_s, completion_tokens=a.completion_tokens,
                                **server_opts)
        print(f"== {name} ...", flush=True)
        t_start = time.time()
        try:  # the server process is stopped whatever happens to the system under test
            if name == "raygrade":
                args_s = w["args"].model_copy(update={"provider": provider.model_copy(
                    update={"base_url": srv.base_url})})
                extra = run_raygrade(w["assessment"], w["interactive"], w["bulk_batches"], args_s, a)
            elif name == "litellm":
                extra = run_litellm(w["payload_file"], srv.base_url, a, rpm=a.rpm, tpm=a.tpm, delay_s=a.send_delay_s)
            elif name == "ray-data":
                extra = run_ray_data(w["payload_file"], srv.base_url, a, w["charge"])
            else:
                extra = run_asyncio(w["payloads"], srv.base_url, a)
            t_end = time.time()
            log = srv.log()
        finally:
            srv.stop()
        with (a.out / f"server-log-{name}.jsonl").open("w") as fh:  # the provider's own record, to audit
            fh.writelines(json.dumps(dataclasses.asdict(r)) + "\n" for r in log)
        m = metrics(log, a.tpm, len(w["batches"]), t_start, t_end)
        if log and [r for r in log if r.status == 200]:
            m["wall_s"] = max(r.t for r in log) - min(r.t for r in log)  # first request to last answer
            m["wall_over_min"] = m["wall_s"] / m["theoretical_min_s"] if m["tokens"] else None
            if m["wall_s"] > 0:
                m.update(serving_throughput(log, m["wall_s"]))
        minutes = per_minute(log, binding, a.rpm if binding == "rpm" else a.tpm)
        m["per_minute_use"] = minutes
        m["min_full_minute_use"] = min(minutes) if minutes else None
        m["mean_full_minute_use"] = sum(minutes) / len(minutes) if minutes else None
        if (win := server_opts.get("window_s", 60.0)) < 60 and binding == "tpm" and log:
            allowed = rule_allows(log, a.tpm, win, a.latency_s, a.latency_per_token_s)
            m["rule_allows_per_minute"] = allowed
            if allowed and minutes:  # each full minute against the rule's mean over its full minutes
                steady = sum(allowed) / len(allowed)
                m["rule_allows"] = steady
                m["min_full_minute_of_allowed"] = min(minutes) / steady
        out[name] = {**m, **extra}
        print(json.dumps({k2: v for k2, v in out[name].items() if k2 != "tokens_per_10s"}), flush=True)
    return out


def run_matrix(w: dict, a: argparse.Namespace, systems: list[str], rows: list[str]) -> dict:
    """Every row of :data:`ROWS`: limits sized so the workload takes ``--row-minutes`` at the binding one."""
    n = len(w["batches"])
    report: dict = {"config": {k2: (str(v) if isinstance(v, Path) else v) for k2, v in vars(a).items()},
                    "requests": n, "mean_charge_tokens": w["charge"], "rows": {}}
    for row in rows:
        spec = ROWS[row]
        if spec.get("api") in ("anthropic", "gemini"):
            a.send_delay_s = 0.0
            run_row = run_anthropic_row if spec["api"] == "anthropic" else run_gemini_row
            report["rows"][row] = run_row(row, w, a, systems, run_raygrade)
            (a.out / "rate_limit_matrix.json").write_text(json.dumps(report, indent=2))
            continue
        mult = spec["provider"].get("prompt_token_multiplier", 1.0)
        tokens_per_request = w["prompt"] * mult + a.completion_tokens  # the provider's own count, final
        rate = n / a.row_minutes
        a.rpm, a.tpm = ((round(rate), round(rate * tokens_per_request * 10)) if spec["binding"] == "rpm"
                        else (round(rate * 10), round(rate * tokens_per_request)))
        a.send_delay_s = spec["send_delay_s"]
        print(f"=== row {row}: RPM {a.rpm}, TPM {a.tpm}, provider {spec['provider'] or 'as raygrade'}, "
              f"send delay {a.send_delay_s} s", flush=True)
        res = run_systems(w, a, systems, {"no_processing_ms_header": True, **spec["provider"]}, spec["binding"])
        report["rows"][row] = {"rpm": a.rpm, "tpm": a.tpm, **spec, "systems": res}
        (a.out / "rate_limit_matrix.json").write_text(json.dumps(report, indent=2))  # after every row
    return report


def f(v, fmt: str) -> str:
    """``v`` formatted, or a dash for a figure that does not exist."""
    return "—" if v is None else format(v, fmt)


def print_matrix(report: dict) -> None:
    """The matrix as one Markdown table."""
    print(f"\n{report['requests']} grading requests per row (4 interactive jobs + a bulk regrade for raygrade); "
          f"each row sized for {report['config']['row_minutes']} min at its binding limit\n")
    print("| row | binding limit | system | 429s / sent | failed | use of the limit: mean, min over full minutes "
          "| per full minute |")
    print("|---|---|---|---|---|---|---|")
    for row, r in report["rows"].items():
        limit = f"{r['rpm']} RPM" if r["binding"] == "rpm" else f"{r['tpm']:,} {r['binding'].upper()}"
        if r["binding"] == "rpd":
            limit = f"{r['rpm']} RPM, {r['rpd']} RPD"
        for name, m in r["systems"].items():
            failed = "stopped" if m.get("stopped") else f(m.get("failed_requests"), "d")
            mean = m.get("mean_full_minute_use")
            if r["binding"] == "rpd":  # the minutes in which the day's quota was open throughout
                m = {**m, "min_full_minute_use": m.get("min_open_minute_use"),
                     "per_minute_use": [m["per_minute_use"][k] for k in m.get("open_minutes", [])]}
            per = ", ".join(f"{u:.2f}" for u in m.get("per_minute_use") or [])
            if m.get("rule_allows"):  # a rule over less than a minute: no client reaches the TPM
                per += (f" (the rule allows {m['rule_allows']:.3f} of the TPM; the least minute "
                        f"{m['min_full_minute_of_allowed']:.3f} of that)")
            print(f"| {row} | {limit} | {name} | {m['rejected_429']} / {m['requests_sent']} "
                  f"({f(m['rejected_429_share'], '.2%')}) | {failed} | {f(mean, '.3f')}, "
                  f"{f(m.get('min_full_minute_use'), '.3f')} | {per} |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--run-ray-data":
        ray_data_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--students", type=int, default=None, help="default 4000 (matrix: 900)")
    ap.add_argument("--students-per-request", type=int, default=2)
    ap.add_argument("--rpm", type=int, default=1500)
    ap.add_argument("--tpm", type=int, default=2_500_000)
    ap.add_argument("--latency-s", type=float, default=0.5)
    ap.add_argument("--latency-per-token-s", type=float, default=0.004)
    ap.add_argument("--completion-tokens", type=int, default=250)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--per-worker-concurrency", type=int, default=16)
    ap.add_argument("--interactive-jobs", type=int, default=4)
    ap.add_argument("--bulk-share", type=float, default=0.25)
    ap.add_argument("--max-wall-s", type=float, default=None, help="default 420 (matrix: row minutes x 60 + 180)")
    ap.add_argument("--systems", default=None, help="default: all (matrix: raygrade,asyncio,litellm)")
    ap.add_argument("--matrix", action="store_true", help="run the provider matrix (see the module doc)")
    ap.add_argument("--rows", default=",".join(ROWS), help="matrix rows to run")
    ap.add_argument("--row-minutes", type=float, default=4.5)
    ap.add_argument("--rpd-reset-after-s", type=float, default=210.0,
                    help="gemini-rpd row: seconds into each run at which the quota's day ends")
    ap.add_argument("--burst-s", help="raygrade's rate_limit.burst_s (default: the config's), or 'off'")
    ap.add_argument("--short-window-s", type=float, default=None,
                    help="raygrade's rate_limit.short_window_s (default: none until a 429 teaches one)")
    ap.add_argument("--litellm-python", default=str(ROOT / "benchmarks/out/litellm-venv/bin/python"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/out")
    a = ap.parse_args()
    a.students = a.students or (900 if a.matrix else 4000)
    a.max_wall_s = a.max_wall_s or (a.row_minutes * 60 + 180 if a.matrix else 420)
    a.systems = a.systems or ("raygrade,asyncio,litellm" if a.matrix else ",".join(SYSTEMS))
    a.send_delay_s = 0.0
    a.out.mkdir(parents=True, exist_ok=True)
    systems = [s for s in a.systems.split(",") if s]
    if unknown := set(systems) - set(SYSTEMS):
        raise SystemExit(f"unknown systems {sorted(unknown)}")
    rows = [r for r in a.rows.split(",") if r]
    if unknown := set(rows) - set(ROWS):
        raise SystemExit(f"unknown rows {sorted(unknown)}; known: {sorted(ROWS)}")
    if "litellm" in systems and (why := litellm_missing(a)):
        raise SystemExit(why)  # before anything is started

    w = build(a)
    print(f"{len(w['batches'])} requests ({len(w['bulk_batches'])} bulk), mean charge {w['charge']:.0f} tokens "
          f"(input + max_tokens)", flush=True)
    if a.matrix:
        report = run_matrix(w, a, systems, rows)
        print_matrix(report)
        print(f"wrote {a.out / 'rate_limit_matrix.json'}")
        return
    report = {"config": {k2: (str(v) if isinstance(v, Path) else v) for k2, v in vars(a).items()},
              "requests": len(w["batches"]), "mean_charge_tokens": w["charge"],
              "systems": run_systems(w, a, systems, {})}
    print_table(report)
    (a.out / "rate_limit.json").write_text(json.dumps(report, indent=2))
    plot(report, a.out / "rate_limit.png", a.tpm)
    print(f"wrote {a.out / 'rate_limit.json'} and {a.out / 'rate_limit.png'}")


def print_table(report: dict) -> None:
    print(f"\n{report['requests']} grading requests, mean charge {report['mean_charge_tokens']:.0f} tokens; "
          f"limits RPM {report['config']['rpm']}, TPM {report['config']['tpm']}\n")
    print("| system | tokens/min ÷ TPM (mean, max 60-s window) | 429s (share of sent) | failed | "
          "wall s | wall ÷ (tokens ÷ TPM) | request throughput req/s |")
    print("|---|---|---|---|---|---|---|")
    for name, m in report["systems"].items():
        failed = "stopped" if m.get("stopped") else f(m.get("failed_requests"), "d")
        if m.get("aborted"):
            failed = f"dataset aborted ({m['aborted']}); {m['unanswered']} unanswered"
        print(f"| {name} | {f(m['utilisation_mean'], '.3f')}, {f(m['utilisation_max'], '.3f')} | "
              f"{m['rejected_429']} ({f(m['rejected_429_share'], '.2%')}) | {failed} | {m['wall_s']:.0f} | "
              f"{f(m['wall_over_min'], '.2f')} | {f(m.get('request_throughput'), '.2f')} |")


def plot(report: dict, path: Path, tpm: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, m in report["systems"].items():
        h = m.get("tokens_per_10s") or []
        # tokens per minute, as a trailing 60-s sum of 10-s bins
        tpm_series = [sum(h[max(0, i - 5):i + 1]) for i in range(len(h))]
        ax.plot([10 * (i + 1) for i in range(len(h))], [v / tpm for v in tpm_series], label=name)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="TPM limit")
    ax.set_xlabel("seconds since the first request")
    ax.set_ylabel("tokens in the trailing minute ÷ TPM")
    ax.set_title("Achieved tokens/min against one rate-limited endpoint")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
