"""A fake Anthropic Messages API for tests and benchmarks: ``POST /v1/messages`` on 127.0.0.1
with Anthropic's own rules, counting its own way.

- **Auth and shape**: ``x-api-key`` (or ``Authorization: Bearer``, as SDK 2.x sends the key) and
  ``anthropic-version`` headers; errors as
  ``{"type": "error", "error": {"type", "message"}}`` with Anthropic's types and statuses
  (400 ``invalid_request_error``, 401 ``authentication_error``, 429 ``rate_limit_error``, 529
  ``overloaded_error``) and a ``request-id`` header.
- **Limits as token buckets refilled continuously** (not a window): requests, input tokens and
  output tokens per minute, each a bucket of one minute's capacity. Output is charged at
  ``max_tokens`` on arrival and settled to the real output; cache reads do not count toward the
  input budget. A request that does not fit is answered 429 with ``retry-after`` (whole seconds
  until it would fit) and is not charged.
- **Headers**: ``anthropic-ratelimit-{requests,input-tokens,output-tokens,tokens}-{limit,remaining,
  reset}``, token ``remaining`` rounded to the nearest thousand as the real API does, ``reset``
  the RFC 3339 time when the bucket is full again.
- **Prompt caching**: a ``system`` block with ``cache_control`` caches the tools and system
  (when at least ``min_cache_tokens``): the first request writes (``cache_creation_input_tokens``),
  later ones within ``cache_ttl_s`` read (``cache_read_input_tokens``).
- **Its own count**: text at one token per 3.5 characters (raygrade estimates with tiktoken:
  they disagree), images by Claude's rule, times ``prompt_token_multiplier``.
- **Answers**: an instance of the schema, as text for ``output_config.format`` (native structured
  output) or as a forced tool's ``input`` for its ``input_schema``; ``script``
  injects ``overloaded``, ``rate_limited``, ``refusal`` or ``server_error`` per request, in order.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import hashlib
import io
import json
import math
import time
import uuid
from typing import TYPE_CHECKING, Any

from raygrade._optional import import_optional
from raygrade.testing.child import FakeProcess
from raygrade.testing.fake_openai.content import schema_instance
from raygrade.testing.fake_openai.runner import ThreadedApp
from raygrade.tokens import claude_image_tokens

if TYPE_CHECKING:
    from aiohttp import web
else:
    web = import_optional("aiohttp.web", "fake", "the fake Anthropic server")

#: Characters per token of the fake's text count.
CHARS_PER_TOKEN = 3.5


def error_response(status: int, etype: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"type": "error", "error": {"type": etype, "message": message}}, status=status,
                             headers={"request-id": f"req_{uuid.uuid4().hex[:24]}", **(headers or {})})


class TokenBucket:
    """``per_minute`` capacity, refilled continuously at ``per_minute / 60`` per second."""

    def __init__(self, per_minute: int, now: float):
        self.capacity = float(per_minute)
        self.level = self.capacity
        self.t = now

    def refill(self, now: float) -> float:
        self.level = min(self.capacity, self.level + (now - self.t) * self.capacity / 60.0)
        self.t = now
        return self.level

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` fits (an amount above capacity waits for a full bucket)."""
        need = min(amount, self.capacity) - self.refill(now)
        return max(0.0, need * 60.0 / self.capacity)

    def full_at(self, now: float) -> float:
        return now + (self.capacity - self.refill(now)) * 60.0 / self.capacity


@dataclasses.dataclass
class MessageRecord:
    """One request the fake answered (or refused): ``t`` when it was answered and ``admitted``
    when its tokens were taken from the buckets (``time.monotonic()``; a 429: when it was refused),
    the usage it reported (input without cache reads, cache reads and writes, output) and its
    ``max_tokens``."""

    t: float
    status: int
    input_tokens: int
    cache_read: int
    cache_write: int
    output_tokens: int
    max_tokens: int
    admitted: float = 0.0


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def auth_error(request: web.Request, api_key: str) -> web.Response | None:
    """Anthropic's 401/400 for a request without the key or the ``anthropic-version`` header."""
    bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
    if api_key not in (request.headers.get("x-api-key"), bearer):
        return error_response(401, "authentication_error", "invalid x-api-key")
    if not request.headers.get("anthropic-version"):
        return error_response(400, "invalid_request_error", "anthropic-version: header is required")
    return None


def answer(body: dict[str, Any], fault: str | None = None) -> tuple[list[dict[str, Any]], str]:
    """``(content blocks, stop_reason)`` of the fake's answer to a Messages request: an instance of
    the forced tool's ``input_schema`` or of ``output_config.format``'s schema; ``fault``
    ``"refusal"`` refuses, ``"malformed"`` answers what the schema does not allow."""
    tool = next((t for t in body.get("tools") or []
                 if (body.get("tool_choice") or {}).get("name") == t.get("name")), None)
    fmt = (body.get("output_config") or {}).get("format") or {}
    if fault == "refusal":
        return [{"type": "text", "text": "I can't help with that."}], "refusal"
    if tool is not None:
        data = {} if fault == "malformed" else schema_instance(tool.get("input_schema") or {})
        return [{"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": tool["name"],
                 "input": data}], "tool_use"
    if fmt.get("type") == "json_schema":
        text = '{"grades": [' if fault == "malformed" else json.dumps(schema_instance(fmt.get("schema") or {}))
        return [{"type": "text", "text": text}], "end_turn"
    return [{"type": "text", "text": "OK"}], "end_turn"


def _image_tokens(block: dict[str, Any]) -> int:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(base64.b64decode(block["source"]["data"]))) as im:
            return claude_image_tokens(*im.size)
    except Exception:
        return 1600


class FakeAnthropicServer(ThreadedApp):
    """The fake Messages API (see the module docstring) in a background thread.

    Args:
        rpm, input_tpm, output_tpm: Per-minute limits (``None``: unlimited).
        latency_s: Seconds before each answer.
        api_key: The key ``x-api-key`` (or the bearer token) must carry.
        prompt_token_multiplier: Counts this many times its own text-and-image rule.
        min_cache_tokens: Smallest prefix (tools + system) that is cached.
        cache_ttl_s: How long a cached prefix lives after its last use.
        script: Faults for the next requests, in order (``None`` entries: answer normally).
    """

    #: Largest request body accepted (bytes).
    client_max_size = 64 * 1024 * 1024

    def __init__(self, *, rpm: int | None = None, input_tpm: int | None = None, output_tpm: int | None = None,
                 latency_s: float = 0.0, api_key: str = "sk-ant-test", host: str = "127.0.0.1", port: int = 0,
                 prompt_token_multiplier: float = 1.0, min_cache_tokens: int = 1024, cache_ttl_s: float = 300.0,
                 script: list[str | None] | None = None):
        self.host, self.port = host, port
        self.latency_s, self.api_key = latency_s, api_key
        self.multiplier = prompt_token_multiplier
        self.min_cache_tokens, self.cache_ttl_s = min_cache_tokens, cache_ttl_s
        self.limits = {"requests": rpm, "input-tokens": input_tpm, "output-tokens": output_tpm}
        self.script = list(script or [])
        self.log: list[MessageRecord] = []
        self._cache: dict[str, float] = {}
        self._lock = asyncio.Lock()
        self._buckets: dict[str, TokenBucket] = {}
        self.reset()

    @property
    def base_url(self) -> str:
        """``http://host:port``: the Anthropic client's base URL (it adds ``/v1/messages``)."""
        return f"http://{self.host}:{self.port}"

    def reset(self) -> None:
        """Full buckets, an empty cache, log and script."""
        now = time.monotonic()
        self._buckets = {d: TokenBucket(n, now) for d, n in self.limits.items() if n is not None}
        self._cache.clear()
        self.log.clear()
        self.script.clear()

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.client_max_size)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_get("/_raygrade/log", self._get_log)
        return app

    async def _get_log(self, request: web.Request) -> web.Response:
        """The audit log as JSON (``{"log": [record, ...]}``), for a benchmark in another process."""
        return web.json_response({"log": [dataclasses.asdict(r) for r in self.log]})

    def _headers(self, now: float) -> dict[str, str]:
        out = {"request-id": f"req_{uuid.uuid4().hex[:24]}"}
        for dim, b in self._buckets.items():
            remaining = int(b.refill(now))
            if dim != "requests":
                remaining = int(round(remaining, -3))
            full = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=b.full_at(now) - now)
            out[f"anthropic-ratelimit-{dim}-limit"] = str(int(b.capacity))
            out[f"anthropic-ratelimit-{dim}-remaining"] = str(remaining)
            out[f"anthropic-ratelimit-{dim}-reset"] = full.isoformat().replace("+00:00", "Z")
        return out

    def _count(self, body: dict[str, Any]) -> tuple[int, int]:
        """``(prefix tokens: tools + system, the rest)`` of a request, by the fake's own count."""
        system = body.get("system") or []
        system_text = system if isinstance(system, str) else "".join(b.get("text", "") for b in system)
        prefix = text_tokens(json.dumps(body.get("tools") or []) + system_text)
        rest = 0
        for m in body.get("messages") or []:
            content = m.get("content")
            for b in ([{"type": "text", "text": content}] if isinstance(content, str) else content or []):
                rest += _image_tokens(b) if b.get("type") == "image" else text_tokens(b.get("text", ""))
        return round(prefix * self.multiplier), round(rest * self.multiplier) + 8

    async def _messages(self, request: web.Request) -> web.Response:
        if (refused := auth_error(request, self.api_key)) is not None:
            return refused
        try:
            body = await request.json()
        except ValueError:
            return error_response(400, "invalid_request_error", "request body is not valid JSON")
        if not isinstance(body, dict) or not body.get("messages") or not isinstance(body.get("max_tokens"), int):
            return error_response(400, "invalid_request_error", "model, messages and max_tokens are required")
        fault = self.script.pop(0) if self.script else None
        max_tokens = body["max_tokens"]
        async with self._lock:
            now = time.monotonic()
            prefix, rest = self._count(body)
            key = hashlib.sha256(json.dumps([body.get("tools"), body.get("system")]).encode()).hexdigest()
            cacheable = any(isinstance(b, dict) and b.get("cache_control") for b in body.get("system") or []) \
                and prefix >= self.min_cache_tokens
            hit = cacheable and self._cache.get(key, -math.inf) > now - self.cache_ttl_s
            uncached = rest + (0 if hit else prefix)
            need = {"requests": 1, "input-tokens": uncached, "output-tokens": max_tokens}
            wait = max([b.wait_for(need[d], now) for d, b in self._buckets.items()] + [0.0])
            if fault == "rate_limited" or wait > 0:
                self.log.append(MessageRecord(now, 429, 0, 0, 0, 0, max_tokens, now))
                return error_response(429, "rate_limit_error", "This request would exceed your rate limit.",
                              {**self._headers(now), "retry-after": str(max(1, math.ceil(wait)))})
            for d, b in self._buckets.items():
                b.level -= need[d]
            admitted = now
            if cacheable:
                self._cache[key] = now
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if fault == "overloaded":
            return error_response(529, "overloaded_error", "Overloaded")
        if fault == "server_error":
            return error_response(500, "api_error", "Internal server error")
        content, stop = answer(body, fault)
        output = min(max_tokens, text_tokens(json.dumps(content)))
        usage = {"input_tokens": rest if cacheable else uncached,
                 "cache_creation_input_tokens": prefix if cacheable and not hit else 0,
                 "cache_read_input_tokens": prefix if hit else 0, "output_tokens": output}
        async with self._lock:
            now = time.monotonic()
            if (out_bucket := self._buckets.get("output-tokens")) is not None:  # settled to the real output
                out_bucket.refill(now)
                out_bucket.level = min(out_bucket.capacity, out_bucket.level + max_tokens - output)
            self.log.append(MessageRecord(now, 200, usage["input_tokens"], usage["cache_read_input_tokens"],
                                          usage["cache_creation_input_tokens"], output, max_tokens, admitted))
            headers = self._headers(now)
        return web.json_response({"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
                                  "model": body.get("model"), "content": content, "stop_reason": stop,
                                  "stop_sequence": None, "usage": usage}, headers=headers)


class FakeAnthropicProcess(FakeProcess):
    """The fake in a child process (``python -m raygrade.testing.fake_anthropic``); ``base_url``
    is the Anthropic client's, ``log()`` the :class:`MessageRecord` s.

    Args:
        **options: ``rpm``, ``input_tpm``, ``output_tpm``, ``latency_s``, ``api_key``,
            ``prompt_token_multiplier``, ``min_cache_tokens`` (as :class:`FakeAnthropicServer`).
    """

    def __init__(self, **options: Any):
        super().__init__("raygrade.testing.fake_anthropic", "fake Anthropic server", MessageRecord, **options)


def main() -> None:  # pragma: no cover - benchmarks and manual use
    import argparse
    import threading

    ap = argparse.ArgumentParser(description="the fake Anthropic Messages API in the foreground")
    ap.add_argument("--port", type=int, default=8200)
    for name in ("rpm", "input-tpm", "output-tpm", "min-cache-tokens"):
        ap.add_argument(f"--{name}", type=int)
    ap.add_argument("--latency-s", type=float, default=0.0)
    ap.add_argument("--prompt-token-multiplier", type=float, default=1.0)
    ap.add_argument("--api-key", default="sk-test")
    a = ap.parse_args()
    srv = FakeAnthropicServer(rpm=a.rpm, input_tpm=a.input_tpm, output_tpm=a.output_tpm, latency_s=a.latency_s,
                              api_key=a.api_key, port=a.port, prompt_token_multiplier=a.prompt_token_multiplier,
                              **({} if a.min_cache_tokens is None else {"min_cache_tokens": a.min_cache_tokens}))
    srv.start()
    print(f"fake Anthropic server on {srv.base_url}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":  # pragma: no cover
    main()
