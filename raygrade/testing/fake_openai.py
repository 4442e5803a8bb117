"""A fake OpenAI-compatible chat server for tests and benchmarks (127.0.0.1 only).

It behaves like the hosted API where raygrade depends on it:

- ``POST /v1/chat/completions`` answers with a ``chat.completion`` object, a
  ``usage`` block, and ``x-request-id`` / ``openai-processing-ms`` /
  ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` headers.
- With ``response_format={"type": "json_schema"}`` the content is a JSON
  instance of the schema (so graders get well-formed grades).
- RPM and TPM are enforced per 60-second window, charged up front as estimated
  input + ``max_tokens``; a request over the limit gets 429 with an OpenAI error
  body (``type: "requests"`` or ``"tokens"``) and ``retry-after``.
- Faults can be scripted per request (``script``) for deterministic tests:
  ``"429"``, ``"500"``, ``"malformed"`` (not JSON), ``"out_of_range"`` (a score
  above the maximum), ``"truncated"`` (cut JSON, ``finish_reason="length"``),
  ``"refusal"``.
- Every request, admitted or rejected, is recorded in ``log`` for auditing.

Run standalone: ``python -m raygrade.testing.fake_openai --port 8100``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import threading
import time
import uuid
from collections import deque
from typing import Any

from aiohttp import web

from raygrade.config import ProviderConfig, RateLimitConfig


@dataclasses.dataclass
class RequestRecord:
    """One request as the server saw it."""

    t: float
    status: int
    model: str | None
    charged_tokens: int
    prompt_tokens: int
    completion_tokens: int
    fault: str | None


def _error(status: int, message: str, etype: str, code: str | None = None, param: str | None = None,
           headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": etype, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Rough token count: 4 characters per token, 85 per image, 4 per message."""
    n = 0
    for m in messages:
        n += 4
        c = m.get("content")
        if isinstance(c, str):
            n += math.ceil(len(c) / 4)
        elif isinstance(c, list):
            for part in c:
                if part.get("type") == "text":
                    n += math.ceil(len(part.get("text", "")) / 4)
                elif part.get("type") == "image_url":
                    n += 85
    return n


def schema_instance(schema: dict[str, Any], name: str = "") -> Any:
    """A deterministic JSON value valid under ``schema`` (the subset raygrade emits)."""
    if "enum" in schema:
        vals = schema["enum"]
        return vals[len(vals) // 2]
    t = schema.get("type")
    if t == "object":
        return {k: schema_instance(v, k) for k, v in schema.get("properties", {}).items()}
    if t == "array":
        return [schema_instance(schema.get("items", {}), name)]
    if t in ("number", "integer"):
        if name == "confidence":
            return 0.8
        lo, hi = schema.get("minimum", 0), schema.get("maximum", 1)
        v = lo + (hi - lo) / 2
        return int(v) if t == "integer" else v
    if t == "string":
        return "Covers the main point; one detail of the reference answer is missing."
    if t == "boolean":
        return True
    return None


class FakeOpenAIServer:
    """The fake server, run on its own event loop in a background thread.

    Args:
        rpm, tpm: Limits per 60-s window (``None``: unlimited).
        latency_s: Fixed latency per request.
        latency_per_token_s: Extra latency per completion token.
        api_key: When set, requests must carry ``Authorization: Bearer <api_key>``.
        host, port: Where to listen (port 0 picks a free one).
    """

    def __init__(self, *, rpm: int | None = None, tpm: int | None = None, latency_s: float = 0.0,
                 latency_per_token_s: float = 0.0, api_key: str | None = "sk-test",
                 host: str = "127.0.0.1", port: int = 0):
        self.rpm, self.tpm = rpm, tpm
        self.latency_s, self.latency_per_token_s = latency_s, latency_per_token_s
        self.api_key = api_key
        self.host, self.port = host, port
        self.script: deque[str] = deque()
        self.log: list[RequestRecord] = []
        self._window_start = time.monotonic()
        self._window_requests = 0
        self._window_tokens = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> FakeOpenAIServer:
        """Start listening; returns once the socket is bound."""
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start_app())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-openai", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake OpenAI server did not start")
        return self

    async def _start_app(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._loop is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)  # type: ignore[union-attr]
        fut.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)  # type: ignore[union-attr]
        self._loop = None

    def reset(self) -> None:
        """Forget the log, the scripted faults and the current window."""
        with self._lock:
            self.log.clear()
            self.script.clear()
            self._window_start = time.monotonic()
            self._window_requests = self._window_tokens = 0

    # -- handlers ----------------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": "fake-grader", "object": "model", "created": 0, "owned_by": "raygrade-testing"}]})

    def _admit(self, tokens: int) -> tuple[str | None, dict[str, str]]:
        with self._lock:
            now = time.monotonic()
            if now - self._window_start >= 60:
                self._window_start, self._window_requests, self._window_tokens = now, 0, 0
            reset_s = max(0.0, 60 - (now - self._window_start))
            over = None
            if self.rpm is not None and self._window_requests + 1 > self.rpm:
                over = "requests"
            elif self.tpm is not None and self._window_tokens + tokens > self.tpm:
                over = "tokens"
            if over is None:
                self._window_requests += 1
                self._window_tokens += tokens
            headers = {}
            if self.rpm is not None:
                headers["x-ratelimit-limit-requests"] = str(self.rpm)
                headers["x-ratelimit-remaining-requests"] = str(max(0, self.rpm - self._window_requests))
                headers["x-ratelimit-reset-requests"] = f"{reset_s:.3f}s"
            if self.tpm is not None:
                headers["x-ratelimit-limit-tokens"] = str(self.tpm)
                headers["x-ratelimit-remaining-tokens"] = str(max(0, self.tpm - self._window_tokens))
                headers["x-ratelimit-reset-tokens"] = f"{reset_s:.3f}s"
            if over:
                headers["retry-after"] = str(max(1, math.ceil(reset_s)))
            return over, headers

    def _record(self, *args: Any) -> None:
        with self._lock:
            self.log.append(RequestRecord(time.time(), *args))

    async def _chat(self, request: web.Request) -> web.Response:
        rid = f"req_{uuid.uuid4().hex[:24]}"
        base_headers = {"x-request-id": rid}
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self._record(401, None, 0, 0, 0, None)
            return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key",
                          headers=base_headers)
        try:
            body = await request.json()
        except json.JSONDecodeError:
            self._record(400, None, 0, 0, 0, None)
            return _error(400, "We could not parse the JSON body of your request.", "invalid_request_error",
                          headers=base_headers)
        model, messages = body.get("model"), body.get("messages")
        if not model or not isinstance(messages, list) or not messages:
            self._record(400, model, 0, 0, 0, None)
            return _error(400, "'messages' is a required property", "invalid_request_error",
                          param="messages", headers=base_headers)
        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 4096)
        prompt_tokens = estimate_prompt_tokens(messages)
        charged = prompt_tokens + max_tokens
        with self._lock:
            fault = self.script.popleft() if self.script else None
        over, rl_headers = self._admit(charged) if fault != "429" else ("requests", {"retry-after": "1"})
        headers = {**base_headers, **rl_headers}
        if over:
            self._record(429, model, charged, prompt_tokens, 0, fault)
            kind = "requests" if over == "requests" else "tokens"
            limit = self.rpm if kind == "requests" else self.tpm
            return _error(429, f"Rate limit reached for {model} on {kind} per min (RPM/TPM): Limit {limit}. "
                          "Please try again later.", kind, "rate_limit_exceeded", headers=headers)
        if fault == "500":
            self._record(500, model, charged, prompt_tokens, 0, fault)
            return _error(500, "The server had an error while processing your request.", "server_error",
                          headers=headers)

        rf = body.get("response_format") or {}
        finish_reason, refusal = "stop", None
        if rf.get("type") == "json_schema":
            value = schema_instance(rf["json_schema"]["schema"])
            if fault == "out_of_range":
                _bump_scores(value)
            content: str | None = json.dumps(value)
        else:
            content = "OK"
        if fault == "malformed":
            content = "Sure! Here are the grades: {score: high"
        elif fault == "truncated":
            content, finish_reason = (content or "")[: max(1, len(content or "") // 2)], "length"
        elif fault == "refusal":
            content, refusal = None, "I can't help with that."
        completion_tokens = math.ceil(len(content or refusal or "") / 4)
        delay = self.latency_s + self.latency_per_token_s * completion_tokens
        started = time.monotonic()
        if delay:
            await asyncio.sleep(delay)
        headers["openai-processing-ms"] = str(int((time.monotonic() - started) * 1000))
        self._record(200, model, charged, prompt_tokens, completion_tokens, fault)
        return web.json_response({
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_raygrade_fake",
            "choices": [{"index": 0, "finish_reason": finish_reason, "logprobs": None,
                         "message": {"role": "assistant", "content": content, "refusal": refusal}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }, headers=headers)


def fake_provider_config(base_url: str, **overrides: Any) -> ProviderConfig:
    """A :class:`ProviderConfig` for this server: key from ``RAYGRADE_FAKE_KEY``, GPT-4o image rule."""
    cfg: dict[str, Any] = dict(
        name="fake", base_url=base_url, api_key_env="RAYGRADE_FAKE_KEY", model="fake-grader", supports_vision=True,
        image_token_rule="gpt-4o", context_window=16_000, max_completion_tokens=4_000,
        rate_limit=RateLimitConfig(rpm=6_000, tpm=4_000_000), max_retries=2)
    cfg.update(overrides)
    return ProviderConfig(**cfg)


def _bump_scores(value: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "score" and isinstance(v, (int, float)):
                value[k] = v + 1000
            else:
                _bump_scores(v)


def main() -> None:  # pragma: no cover - manual use
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8100)
    ap.add_argument("--rpm", type=int)
    ap.add_argument("--tpm", type=int)
    ap.add_argument("--latency-s", type=float, default=0.0)
    a = ap.parse_args()
    srv = FakeOpenAIServer(rpm=a.rpm, tpm=a.tpm, latency_s=a.latency_s, port=a.port).start()
    print(f"fake OpenAI server on {srv.base_url}")
    threading.Event().wait()


if __name__ == "__main__":  # pragma: no cover
    main()
