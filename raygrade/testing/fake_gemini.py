"""A fake Gemini API for tests and benchmarks: ``POST /v1beta/models/{model}:generateContent`` on
127.0.0.1, with the Gemini API's own rules, counting its own way.

- **Auth and shape**: the key in ``x-goog-api-key`` (or ``?key=``); errors as Google RPC status
  bodies ``{"error": {"code", "message", "status", "details"}}``.
- **Limits** per project: requests per minute and input tokens per minute (sliding 60 s), and
  **requests per day**, reset at midnight Pacific time (``day_reset`` overrides the clock of the
  day). A refusal is 429 ``RESOURCE_EXHAUSTED`` whose wait is only in the body
  (``google.rpc.RetryInfo.retryDelay``, no ``Retry-After`` header) and whose
  ``google.rpc.QuotaFailure`` names the quota (``…PerMinute…`` or ``…PerDay…``); a refused
  request is not counted.
- **Implicit caching**: a request whose system instruction was seen before (and is at least
  ``min_cache_tokens``) reports it as ``cachedContentTokenCount``.
- **Its own count**: text at one token per 4 characters, images at 258 tokens per 768-px tile,
  times ``prompt_token_multiplier``.
- **Answers**: with ``responseJsonSchema`` (or ``responseSchema``) an instance of the schema as JSON
  text; ``script`` injects ``rate_limited``, ``quota_day``, ``unavailable`` (503) or ``safety``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import datetime as dt
import hashlib
import io
import json
import math
import time
from typing import TYPE_CHECKING, Any

from raygrade._optional import import_optional
from raygrade.testing.fake_openai.content import schema_instance
from raygrade.testing.fake_openai.runner import ThreadedApp
from raygrade.tokens import gemini_image_tokens

if TYPE_CHECKING:
    from aiohttp import web
else:
    web = import_optional("aiohttp.web", "fake", "the fake Gemini server")

CHARS_PER_TOKEN = 4.0
PER_MINUTE_QUOTA = "GenerateRequestsPerMinutePerProjectPerModel"
TOKENS_PER_MINUTE_QUOTA = "GenerateContentInputTokensPerModelPerMinute"
PER_DAY_QUOTA = "GenerateRequestsPerDayPerProjectPerModel"


def _status(code: int, status: str, message: str, details: list[dict[str, Any]] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, "status": status,
                                        "details": details or []}}, status=code)


def _exhausted(quota: str, delay_s: float) -> web.Response:
    return _status(429, "RESOURCE_EXHAUSTED", f"You exceeded your current quota ({quota}).", [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
         "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                         "quotaId": quota}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{delay_s:.1f}s"}])


def _pacific_day() -> str:
    from zoneinfo import ZoneInfo

    return dt.datetime.now(ZoneInfo("America/Los_Angeles")).date().isoformat()


@dataclasses.dataclass
class GenerateRecord:
    """One request the fake answered (or refused)."""

    t: float
    status: int
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int


class FakeGeminiServer(ThreadedApp):
    """The fake Gemini API (see the module docstring) in a background thread.

    Args:
        rpm, input_tpm, rpd: Limits per minute and per day (``None``: unlimited).
        latency_s: Seconds before each answer.
        api_key: The key requests must carry.
        prompt_token_multiplier: Counts this many times its own text-and-image rule.
        min_cache_tokens: Smallest system instruction the implicit cache holds.
        day_reset: Returns the current quota day's name (midnight Pacific by default); a new
            name resets the per-day count.
    """

    def __init__(self, *, rpm: int | None = None, input_tpm: int | None = None, rpd: int | None = None,
                 latency_s: float = 0.0, api_key: str = "sk-test", host: str = "127.0.0.1", port: int = 0,
                 prompt_token_multiplier: float = 1.0, min_cache_tokens: int = 1024, day_reset=_pacific_day):
        self.host, self.port = host, port
        self.rpm, self.input_tpm, self.rpd = rpm, input_tpm, rpd
        self.latency_s, self.api_key = latency_s, api_key
        self.multiplier, self.min_cache_tokens, self.day_reset = prompt_token_multiplier, min_cache_tokens, day_reset
        self.script: list[str | None] = []
        self.log: list[GenerateRecord] = []
        self._lock = asyncio.Lock()
        self.reset()

    @property
    def base_url(self) -> str:
        """``http://host:port``: the ``google-genai`` client's ``base_url`` (it adds ``/v1beta/models/…``)."""
        return f"http://{self.host}:{self.port}"

    def reset(self) -> None:
        """Empty windows, day count, cache, log and script."""
        self._minute: collections.deque[tuple[float, int]] = collections.deque()
        self._day, self._day_count = self.day_reset(), 0
        self._cache: set[str] = set()
        self.log = []
        self.script = []

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/{version}/models/{call}", self._generate)
        return app

    def _count(self, body: dict[str, Any]) -> tuple[int, int]:
        """``(system instruction tokens, the rest)`` by the fake's own count."""
        def parts_tokens(parts: list[dict[str, Any]]) -> int:
            n = 0
            for p in parts:
                if "text" in p:
                    n += math.ceil(len(p["text"]) / CHARS_PER_TOKEN)
                elif "inlineData" in p:
                    n += _image_tokens(p["inlineData"].get("data", ""))
            return n
        system = parts_tokens((body.get("systemInstruction") or {}).get("parts") or [])
        rest = sum(parts_tokens(c.get("parts") or []) for c in body.get("contents") or [])
        return round(system * self.multiplier), round(rest * self.multiplier)

    async def _generate(self, request: web.Request) -> web.Response:
        model, _, method = request.match_info["call"].partition(":")
        if method != "generateContent":
            return _status(404, "NOT_FOUND", f"method {method!r} not found")
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if key != self.api_key:
            return _status(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.")
        try:
            body = await request.json()
        except ValueError:
            return _status(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        if not isinstance(body, dict) or not body.get("contents"):
            return _status(400, "INVALID_ARGUMENT", "contents is not specified")
        fault = self.script.pop(0) if self.script else None
        gen = body.get("generationConfig") or {}
        async with self._lock:
            now = time.monotonic()
            while self._minute and self._minute[0][0] <= now - 60.0:
                self._minute.popleft()
            if (day := self.day_reset()) != self._day:
                self._day, self._day_count = day, 0
            system, rest = self._count(body)
            prompt = system + rest
            if fault == "quota_day" or (self.rpd is not None and self._day_count >= self.rpd):
                self.log.append(GenerateRecord(now, 429, 0, 0, 0))
                return _exhausted(PER_DAY_QUOTA, 3600.0)
            used = sum(t for _, t in self._minute)
            oldest = self._minute[0][0] + 60.0 - now if self._minute else 1.0
            if fault == "rate_limited" or (self.rpm is not None and len(self._minute) >= self.rpm):
                self.log.append(GenerateRecord(now, 429, 0, 0, 0))
                return _exhausted(PER_MINUTE_QUOTA, max(0.1, oldest))
            if self.input_tpm is not None and used + prompt > self.input_tpm and self._minute:
                self.log.append(GenerateRecord(now, 429, 0, 0, 0))
                return _exhausted(TOKENS_PER_MINUTE_QUOTA, max(0.1, oldest))
            self._minute.append((now, prompt))
            self._day_count += 1
            digest = hashlib.sha256(json.dumps(body.get("systemInstruction"), sort_keys=True).encode()).hexdigest()
            cached = system if system >= self.min_cache_tokens and digest in self._cache else 0
            if system >= self.min_cache_tokens:
                self._cache.add(digest)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if fault == "unavailable":
            return _status(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
        schema = gen.get("responseJsonSchema") or gen.get("responseSchema")
        text = json.dumps(schema_instance(schema)) if schema else "OK"
        finish = "SAFETY" if fault == "safety" else "STOP"
        output = min(int(gen.get("maxOutputTokens") or 8192), math.ceil(len(text) / CHARS_PER_TOKEN))
        async with self._lock:
            self.log.append(GenerateRecord(time.monotonic(), 200, prompt, cached, output))
        candidate: dict[str, Any] = {"finishReason": finish, "index": 0}
        if finish == "STOP":
            candidate["content"] = {"role": "model", "parts": [{"text": text}]}
        usage = {"promptTokenCount": prompt, "candidatesTokenCount": output if finish == "STOP" else 0,
                 "totalTokenCount": prompt + (output if finish == "STOP" else 0)}
        if cached:
            usage["cachedContentTokenCount"] = cached
        return web.json_response({"candidates": [candidate], "usageMetadata": usage, "modelVersion": model,
                                  "responseId": hashlib.md5(str(now).encode()).hexdigest()[:16]})


def _image_tokens(data: str) -> int:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            return gemini_image_tokens(*im.size)
    except Exception:
        return 258
