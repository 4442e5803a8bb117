"""Batch API benchmark: what a regrade costs synchronously vs through the Batch API, and a
batch-mode run end to end against the fake Batch API.

For a dataset in the regrade layout (e.g. SAF's unseen answers and questions rendered as
page images, written by ``python -m raygrade.datasets saf DIR --images --split
unseen_answers,unseen_questions``), per hosted vision model given (name, image rule and list
prices per million input / output tokens):

- ``raygrade estimate``'s figures: requests, prompt tokens (of which images), the completion
  budget, and USD synchronous vs batch (the batch price over the synchronous one: 0.50);
- then one ``--mode batch-api`` regrade of the whole dataset against the fake Batch API on
  127.0.0.1 (the first model's settings; ``--error-every`` / ``--expire`` inject error lines
  and an expired batch): wall time, batches, rounds, rows and error rows, and the prompt
  tokens the fake counted over the estimate's (≈ 1.00).

Run: ``.venv/bin/python benchmarks/batch_api.py /tmp/saf-img`` (``--out FILE`` writes JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from openai import OpenAI  # noqa: E402

from raygrade.bulk import RegradeConfig  # noqa: E402
from raygrade.bulk.config import BatchApiConfig  # noqa: E402
from raygrade.bulk.estimate import estimate  # noqa: E402
from raygrade.bulk.pipeline import run_batch_regrade  # noqa: E402
from raygrade.config import ProviderConfig  # noqa: E402
from raygrade.testing.fake_openai import FakeBatchAPI  # noqa: E402

#: OpenAI list prices (USD per million tokens, standard tier, synchronous): gpt-4o 2.50 / 10.00,
#: gpt-4o-mini 0.15 / 0.60 (whose images count ≈ 33× the tokens of gpt-4o's).
MODELS = {"gpt-4o": (2.50, 10.00), "gpt-4o-mini": (0.15, 0.60)}


def provider(model: str, base_url: str | None = None) -> ProviderConfig:
    p_in, p_out = MODELS[model]
    return ProviderConfig(name="openai", model=model, image_token_rule=model, context_window=128_000,  # type: ignore[arg-type]
                          max_completion_tokens=16_384, price_per_mtok_input_usd=p_in,
                          price_per_mtok_output_usd=p_out, base_url=base_url,
                          api_key_env="RAYGRADE_FAKE_KEY" if base_url else "OPENAI_API_KEY")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--models", default="gpt-4o,gpt-4o-mini")
    ap.add_argument("--error-every", type=int, default=50, help="every n-th request of the fake is a 500")
    ap.add_argument("--expire", type=int, default=2, help="this batch (1-based) expires half-way (0: none)")
    ap.add_argument("--out")
    a = ap.parse_args()
    models = a.models.split(",")
    out: dict = {"dataset": a.dataset, "models": {}}
    print("| model | requests | prompt tokens (images) | completion budget | USD sync | USD batch | batch/sync |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for m in models:
        cfg = RegradeConfig(input=a.dataset, output="-", provider=provider(m))
        est = estimate(cfg)
        d = est.as_dict(*MODELS[m], 0.5)
        s, b = d["usd_sync"]["total_at_most"], d["usd_batch"]["total_at_most"]
        out["models"][m] = d
        print(f"| {m} ({MODELS[m][0]} / {MODELS[m][1]}) | {est.requests} | {est.prompt_tokens:,} "
              f"({est.image_tokens:,}) | {est.max_completion_tokens:,} | {s:.2f} | {b:.2f} | {b / s:.2f} |",
              flush=True)
    api = FakeBatchAPI(error_every=a.error_every, expire_batches={a.expire} if a.expire else set()).start()
    os.environ.setdefault("RAYGRADE_FAKE_KEY", "sk-test")
    try:
        with tempfile.TemporaryDirectory(prefix="raygrade-batch-bench-") as tmp:
            cfg = RegradeConfig(input=a.dataset, output=tmp, provider=provider(models[0], api.base_url),
                                mode="batch-api", batch_api=BatchApiConfig(max_requests_per_file=25,
                                                                           poll_interval_s=0.05))
            t0 = time.monotonic()
            summary = run_batch_regrade(cfg, client=OpenAI(base_url=api.base_url, api_key="sk-test"))
            wall = time.monotonic() - t0
        run = {"wall_s": round(wall, 1), "batches": len(api.log["batches"]), "requests_run": len(api.log["requests"]),
               "rows": summary.items, "error_rows": summary.failed_items,
               "estimated_prompt_tokens": summary.report["estimate"]["prompt_tokens"],
               "billed_prompt_tokens": summary.report["prompt_tokens"], "cost_usd_batch": summary.report["cost_usd"]}
    finally:
        api.stop()
    out["fake_batch_run"] = run
    print(f"\nfake Batch API run ({models[0]}; every {a.error_every}th request a 500, batch {a.expire} expired): "
          f"{run['wall_s']} s wall, {run['batches']} batches, {run['requests_run']} requests run, {run['rows']} rows "
          f"({run['error_rows']} errors); prompt tokens billed / estimated "
          f"{run['billed_prompt_tokens'] / max(1, run['estimated_prompt_tokens']):.3f}")
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
