"""The fake server in a child process, and a provider config pointing at a fake server."""

from __future__ import annotations

import json
from typing import Any

from raygrade.config import ProviderConfig, RateLimitConfig
from raygrade.testing.fake_openai.records import RequestRecord


class FakeOpenAIProcess:
    """The fake server in a child process (``python -m raygrade.testing.fake_openai``), so a
    benchmark's clients and the server do not share one interpreter.

    Args:
        **options: ``rpm``, ``tpm``, ``window_s``, ``latency_s``, ``latency_per_token_s``,
            ``completion_tokens`` (as :class:`FakeOpenAIServer`).
    """

    def __init__(self, **options: Any):
        import subprocess
        import sys

        from raygrade.testing.ports import free_port

        self.port = free_port()
        cmd = [sys.executable, "-m", "raygrade.testing.fake_openai", "--port", str(self.port)]
        for k, v in options.items():
            if isinstance(v, bool):  # a flag: given when true (e.g. count_rejected, no_processing_ms_header)
                cmd += [f"--{k.replace('_', '-')}"] if v else []
            elif v is not None:
                cmd += [f"--{k.replace('_', '-')}", str(v)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        if not (self.proc.stdout.readline() or "").startswith("fake OpenAI server"):
            raise RuntimeError("fake OpenAI server process did not start")
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def log(self) -> list[RequestRecord]:
        """The server's audit log."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_raygrade/log", timeout=60) as r:
            return [RequestRecord(**row) for row in json.loads(r.read())["log"]]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def fake_provider_config(base_url: str, **overrides: Any) -> ProviderConfig:
    """A :class:`ProviderConfig` for this server: key from ``RAYGRADE_FAKE_KEY``, GPT-4o image rule."""
    cfg: dict[str, Any] = dict(
        name="fake", base_url=base_url, api_key_env="RAYGRADE_FAKE_KEY", model="fake-grader", supports_vision=True,
        image_token_rule="gpt-4o", context_window=16_000, max_completion_tokens=4_000,
        rate_limit=RateLimitConfig(rpm=6_000, tpm=4_000_000), max_retries=2)
    cfg.update(overrides)
    return ProviderConfig(**cfg)


#: Log-probability the fake server gives every token it emits (score digits included).
