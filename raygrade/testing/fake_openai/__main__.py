"""``python -m raygrade.testing.fake_openai``: run the fake server in the foreground."""

from __future__ import annotations

import argparse
import threading

from raygrade.testing.fake_openai.records import WINDOW_S
from raygrade.testing.fake_openai.server import FakeOpenAIServer


def main() -> None:  # pragma: no cover - manual use and benchmarks
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8100)
    ap.add_argument("--rpm", type=int)
    ap.add_argument("--tpm", type=int)
    ap.add_argument("--window-s", type=float, default=WINDOW_S)
    ap.add_argument("--latency-s", type=float, default=0.0)
    ap.add_argument("--latency-per-token-s", type=float, default=0.0)
    ap.add_argument("--completion-tokens", type=int)
    ap.add_argument("--no-refund", action="store_true", help="keep charging input + max_tokens")
    ap.add_argument("--api-key", default="sk-test")
    ap.add_argument("--prompt-token-multiplier", type=float, default=1.0,
                    help="count prompts this many times the API's rule (a provider that disagrees)")
    ap.add_argument("--no-processing-ms-header", action="store_true")
    ap.add_argument("--count-rejected", action="store_true", help="charge 429'd requests (OpenAI's rule)")
    ap.add_argument("--minute-headers", action="store_true",
                    help="x-ratelimit-limit-* give the per-minute limits while --window-s enforces them")
    a = ap.parse_args()
    srv = FakeOpenAIServer(rpm=a.rpm, tpm=a.tpm, window_s=a.window_s, latency_s=a.latency_s,
                           latency_per_token_s=a.latency_per_token_s, completion_tokens=a.completion_tokens,
                           refund_unused=not a.no_refund, api_key=a.api_key, port=a.port,
                           prompt_token_multiplier=a.prompt_token_multiplier,
                           processing_ms_header=not a.no_processing_ms_header,
                           count_rejected=a.count_rejected, minute_headers=a.minute_headers).start()
    print(f"fake OpenAI server on {srv.base_url}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":  # pragma: no cover
    main()

