"""One LiteLLM worker for benchmarks/rate_limit.py (runs in LiteLLM's own virtualenv).

Each worker is one process with its own ``litellm.Router`` whose single deployment
carries the provider's ``rpm``/``tpm`` (usage-based routing v2 with pre-call
checks), as a team running N replicas of a LiteLLM-based grader would configure
it. It sends its shard of the workload with bounded concurrency and writes one
outcome per request.

Usage: python _litellm_worker.py PAYLOADS.jsonl SHARD NSHARDS BASE_URL RPM TPM CONCURRENCY OUT.json [DELAY_S [MODEL]]

``DELAY_S`` (default 0): seconds each call sleeps before it is handed to the router (the
rate-limit matrix's client-side delay). ``MODEL`` (default ``openai/fake-grader``): LiteLLM's
model string; ``anthropic/…`` sends the same OpenAI-shaped payloads through LiteLLM's Anthropic
translation to ``BASE_URL``'s Messages API.
"""

import asyncio
import json
import sys
import time


async def main() -> None:
    path, shard, nshards, base_url, rpm, tpm, conc, out = sys.argv[1:9]
    shard, nshards, rpm, tpm, conc = int(shard), int(nshards), int(rpm), int(tpm), int(conc)
    delay = float(sys.argv[9]) if len(sys.argv) > 9 else 0.0
    model = sys.argv[10] if len(sys.argv) > 10 else "openai/fake-grader"
    import litellm
    from litellm import Router

    litellm.suppress_debug_info = True
    router = Router(
        model_list=[{"model_name": "grader", "litellm_params": {
            "model": model, "api_base": base_url, "api_key": "sk-test", "rpm": rpm, "tpm": tpm}}],
        routing_strategy="usage-based-routing-v2", enable_pre_call_checks=True, num_retries=3)
    with open(path) as f:
        payloads = [json.loads(line) for i, line in enumerate(f) if i % nshards == shard]
    sem = asyncio.Semaphore(conc)
    outcomes = []

    async def one(p):
        async with sem:
            await asyncio.sleep(delay)
            t0 = time.time()
            try:
                await router.acompletion(model="grader", messages=p["messages"], max_tokens=p["max_tokens"],
                                         response_format=p.get("response_format"))
                outcomes.append({"ok": True, "t": time.time() - t0})
            except Exception as exc:  # recorded, the run goes on
                outcomes.append({"ok": False, "error": type(exc).__name__, "t": time.time() - t0})

    await asyncio.gather(*(one(p) for p in payloads))
    with open(out, "w") as f:
        json.dump(outcomes, f)


if __name__ == "__main__":
    asyncio.run(main())
