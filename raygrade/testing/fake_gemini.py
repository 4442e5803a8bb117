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
from raygrade.testing.child import FakeProcess
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


def zone_with_midnight_at(t: float) -> str:
    """A fixed-offset zone (``UTC+HH:MM:SS``) in which epoch second ``t`` is midnight: a quota day
    that ends at ``t`` for this fake (``day_zone``) and raygrade (``rate_limit.rpd_reset_zone``)."""
    offset = round(-t) % 86_400
    return f"UTC+{offset // 3600:02d}:{offset % 3600 // 60:02d}:{offset % 60:02d}"


def day_in(zone: str):
    """A ``day_reset`` for the day of time zone ``zone`` (:func:`raygrade.config.rate_limit.quota_zone`)."""
    from raygrade.config.rate_limit import quota_zone

    tz = quota_zone(zone)
    return lambda: dt.datetime.now(tz).date().isoformat()


@dataclasses.dataclass
class GenerateRecord:
    """One request the fake answered (or refused): ``t`` when it was answered and ``admitted``
    when it was counted (``time.monotonic()``; a 429: when it was refused, ``quota`` naming the
    quota), its prompt, cached and output tokens."""

    t: float
    status: int
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    admitted: float = 0.0
    quota: str = ""


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
        app.router.add_get("/_raygrade/log", self._get_log)
        return app

    async def _get_log(self, request: web.Request) -> web.Response:
        """The audit log as JSON (``{"log": [record, ...]}``), for a benchmark in another process."""
        return web.json_response({"log": [dataclasses.asdict(r) for r in self.log]})

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
                self.log.append(GenerateRecord(now, 429, 0, 0, 0, now, PER_DAY_QUOTA))
                return _exhausted(PER_DAY_QUOTA, 3600.0)
            used = sum(t for _, t in self._minute)
            oldest = self._minute[0][0] + 60.0 - now if self._minute else 1.0
            if fault == "rate_limited" or (self.rpm is not None and len(self._minute) >= self.rpm):
                self.log.append(GenerateRecord(now, 429, 0, 0, 0, now, PER_MINUTE_QUOTA))
                return _exhausted(PER_MINUTE_QUOTA, max(0.1, oldest))
            if self.input_tpm is not None and used + prompt > self.input_tpm and self._minute:
                self.log.append(GenerateRecord(now, 429, 0, 0, 0, now, TOKENS_PER_MINUTE_QUOTA))
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
            self.log.append(GenerateRecord(time.monotonic(), 200, prompt, cached, output, now))
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


class FakeGeminiProcess(FakeProcess):
    """The fake in a child process (``python -m raygrade.testing.fake_gemini``); ``base_url`` is
    the ``google-genai`` client's, ``log()`` the :class:`GenerateRecord` s.

    Args:
        **options: ``rpm``, ``input_tpm``, ``rpd``, ``latency_s``, ``api_key``, ``day_zone`` (the time
            zone whose midnight resets the per-day count; Pacific by default).
    """

    def __init__(self, **options: Any):
        super().__init__("raygrade.testing.fake_gemini", "fake Gemini server", GenerateRecord, **options)


def main() -> None:  # pragma: no cover - benchmarks and manual use
    import argparse
    import threading

    ap = argparse.ArgumentParser(description="the fake Gemini API in the foreground")
    ap.add_argument("--port", type=int, default=8300)
    for name in ("rpm", "input-tpm", "rpd"):
        ap.add_argument(f"--{name}", type=int)
    ap.add_argument("--latency-s", type=float, default=0.0)
    ap.add_argument("--api-key", default="sk-test")
    ap.add_argument("--day-zone", default="America/Los_Angeles")
    a = ap.parse_args()
    srv = FakeGeminiServer(rpm=a.rpm, input_tpm=a.input_tpm, rpd=a.rpd, latency_s=a.latency_s, api_key=a.api_key,
                           port=a.port, day_reset=day_in(a.day_zone))
    srv.start()
    print(f"fake Gemini server on {srv.base_url}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":  # pragma: no cover
    main()
