"""A fake OpenAI-compatible chat server for tests and benchmarks (127.0.0.1 only).

It behaves like the hosted API where raygrade depends on it:

- ``POST /v1/chat/completions`` answers with a ``chat.completion`` object, a
  ``usage`` block, and ``x-request-id`` / ``openai-processing-ms`` /
  ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` headers.
- Prompt tokens are counted like the real API: tiktoken on the text parts, 3 per
  message plus 3 to prime the reply (OpenAI cookbook, "How to count tokens with
  tiktoken"), and GPT-4o tile tokens for each image from its pixel size.
- With ``response_format={"type": "json_schema"}`` the content is a JSON
  instance of the schema (so graders get well-formed grades).
- RPM and TPM are enforced over a **sliding 60-second window** (or a shorter
  ``window_s``, allowing ``rpm·window_s/60`` per window, as Azure OpenAI does; the
  ``x-ratelimit-*`` headers then speak in the window's units): a request is
  charged input + ``max_tokens`` when admitted, and the charge drops to the
  actual ``usage`` when it completes (``refund_unused``). A request that would
  take any trailing minute over a limit gets 429 with an OpenAI error body
  (``type: "requests"`` or ``"tokens"``), ``retry-after`` / ``retry-after-ms``
  (when it would fit) and the rate-limit headers; it is not charged.
- Latency: ``latency_s`` per request plus ``latency_per_token_s`` per completion token.
- Faults, scripted per request (``script``, for deterministic tests) or drawn at
  ``fault_rates`` (seeded): ``"429"``, ``"500"``, ``"malformed"`` (not JSON),
  ``"out_of_range"`` (a score above the maximum), ``"truncated"`` (cut JSON,
  ``finish_reason="length"``), ``"refusal"``.
- Every request, admitted or rejected, is recorded in ``log`` for auditing
  (:func:`audit_windows` checks that no minute went over the limits).

Run standalone: ``python -m raygrade.testing.fake_openai --port 8100 --tpm 200000``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import io
import json
import math
import random
import re
import threading
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

from PIL import Image

from raygrade._optional import import_optional
from raygrade.config import ProviderConfig, RateLimitConfig
from raygrade.tokens import TiktokenCounter, gpt4o_image_tokens

if TYPE_CHECKING:
    from aiohttp import web
else:
    web = import_optional("aiohttp.web", "fake", "the fake OpenAI-compatible server")

#: Length of the rate-limit window, seconds.
WINDOW_S = 60.0
FAULTS = ("429", "500", "malformed", "out_of_range", "truncated", "refusal", "timeout", "reset")


@dataclasses.dataclass
class RequestRecord:
    """One request as the server saw it.

    Attributes:
        t: Wall-clock time it arrived (``time.time()``).
        status: HTTP status answered (0: none: the connection was reset, or held past the client's timeout).
        model: Requested model.
        charged_tokens: Input + ``max_tokens`` charged on admission (also set for a 429: what it asked for).
        prompt_tokens, completion_tokens: As reported in ``usage``.
        fault: The injected fault, if any.
        mono: ``time.monotonic()`` at admission (or rejection).
        final_tokens: What stays charged in the window once it completed (0 if rejected).
        items: ``"alias/question_id"`` for each item the structured-output schema asked
            for, on answered requests (the judge of which grades a provider produced).
    """

    t: float
    status: int
    model: str | None
    charged_tokens: int
    prompt_tokens: int
    completion_tokens: int
    fault: str | None
    mono: float = 0.0
    final_tokens: int = 0
    items: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Entry:
    t: float
    tokens: int


def _error(status: int, message: str, etype: str, code: str | None = None, param: str | None = None,
           headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": etype, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


_COUNTER: TiktokenCounter | None = None


def _image_size(url: str) -> tuple[int, int] | None:
    if not url.startswith("data:"):
        return None
    try:
        data = base64.b64decode(url.split(",", 1)[1])
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            return im.size
    except Exception:
        return None


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Prompt tokens as the hosted API counts them (see the module docstring).

    Images that are not ``data:`` URLs or cannot be decoded count 85 tokens (low detail).
    """
    global _COUNTER
    if _COUNTER is None:
        _COUNTER = TiktokenCounter()
    n = 3
    for m in messages:
        n += 3
        c = m.get("content")
        if isinstance(c, str):
            n += _COUNTER.count(c)
        elif isinstance(c, list):
            for part in c:
                if part.get("type") == "text":
                    n += _COUNTER.count(part.get("text", ""))
                elif part.get("type") == "image_url":
                    image = part.get("image_url") or {}
                    size = _image_size(image.get("url", ""))
                    detail = "low" if image.get("detail") == "low" else "high"
                    n += gpt4o_image_tokens(*size, detail=detail) if size else 85
    return n


def schema_instance(schema: dict[str, Any], name: str = "", pad_tokens: int | None = None) -> Any:
    """A deterministic JSON value valid under ``schema`` (the subset raygrade emits).

    With ``pad_tokens``, string fields are lengthened so the whole value is about that many tokens.
    """
    if pad_tokens:
        value = schema_instance(schema, name)
        strings = _count_strings(value)
        extra = max(0, pad_tokens - math.ceil(len(json.dumps(value)) / 4))
        if strings and extra:
            _pad_strings(value, " Detail" * (extra // strings // 2 + 1))
        return value
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
        rpm, tpm: Limits per minute (``None``: unlimited).
        window_s: Length of the sliding window; the window allows ``rpm·window_s/60``.
        latency_s: Fixed latency per request, seconds.
        latency_per_token_s: Extra latency per completion token, seconds.
        refund_unused: On completion, the charge drops from input + ``max_tokens`` to actual usage.
        fault_rates: Probability of each fault in :data:`FAULTS` per request (after ``script``).
        seed: Seed of the fault draws.
        completion_tokens: When set, completions are padded to about this many tokens
            (a realistic output length for load tests); otherwise as short as the schema allows.
        api_key: When set, requests must carry ``Authorization: Bearer <api_key>``.
        host, port: Where to listen (port 0 picks a free one).
        hang_s: How long a ``timeout`` fault holds the request before answering (set it
            above the client's timeout). A ``reset`` fault closes the connection unanswered.
    """

    def __init__(self, *, rpm: int | None = None, tpm: int | None = None, window_s: float = WINDOW_S,
                 latency_s: float = 0.0,
                 latency_per_token_s: float = 0.0, refund_unused: bool = True,
                 fault_rates: dict[str, float] | None = None, seed: int = 0, completion_tokens: int | None = None,
                 api_key: str | None = "sk-test", host: str = "127.0.0.1", port: int = 0, hang_s: float = 30.0):
        self.rpm, self.tpm = rpm, tpm
        self.hang_s = hang_s
        self.window_s = window_s
        # Limits per window, in the window's units.
        self._rpm_w = int(rpm * window_s / WINDOW_S) if rpm is not None else None
        self._tpm_w = int(tpm * window_s / WINDOW_S) if tpm is not None else None
        self.latency_s, self.latency_per_token_s = latency_s, latency_per_token_s
        self.refund_unused = refund_unused
        unknown = set(fault_rates or {}) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
        self.fault_rates = dict(fault_rates or {})
        self._rng = random.Random(seed)
        self.completion_tokens = completion_tokens
        self.api_key = api_key
        self.host, self.port = host, port
        self.script: deque[str] = deque()
        self.log: list[RequestRecord] = []
        self._req_window: deque[float] = deque()
        self._tok_window: deque[_Entry] = deque()
        self._tok_used = 0
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
        # Test-only endpoints for a server run in another process (benchmarks).
        app.router.add_get("/_raygrade/log", self._get_log)
        app.router.add_post("/_raygrade/reset", self._post_reset)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
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
            self._req_window.clear()
            self._tok_window.clear()
            self._tok_used = 0

    # -- handlers ----------------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.Response:
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        return web.json_response({"object": "list", "data": [
            {"id": "fake-grader", "object": "model", "created": 0, "owned_by": "raygrade-testing"}]})

    async def _get_log(self, request: web.Request) -> web.Response:
        with self._lock:
            rows = [dataclasses.asdict(r) for r in self.log]
        return web.json_response({"log": rows, "rpm": self.rpm, "tpm": self.tpm, "window_s": self.window_s})

    async def _post_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    def _expire(self, now: float) -> None:
        while self._req_window and self._req_window[0] <= now - self.window_s:
            self._req_window.popleft()
        while self._tok_window and self._tok_window[0].t <= now - self.window_s:
            self._tok_used -= self._tok_window.popleft().tokens

    def _tokens_free_in(self, tokens: int, now: float) -> float | None:
        """Seconds until ``tokens`` fit in the token window (``None``: never, above the limit)."""
        if self._tpm_w is None or tokens > self._tpm_w:
            return None
        excess, freed = self._tok_used + tokens - self._tpm_w, 0
        for e in self._tok_window:
            freed += e.tokens
            if freed >= excess:
                return e.t + self.window_s - now
        return 0.0

    def _admit(self, tokens: int) -> tuple[str | None, dict[str, str], _Entry | None, float]:
        """Charge one request of ``tokens`` if both windows allow it, under the lock."""
        with self._lock:
            now = time.monotonic()
            self._expire(now)
            over, retry = None, None
            if self._rpm_w is not None and len(self._req_window) + 1 > self._rpm_w:
                over, retry = "requests", self._req_window[0] + self.window_s - now
            elif self._tpm_w is not None and self._tok_used + tokens > self._tpm_w:
                over, retry = "tokens", self._tokens_free_in(tokens, now)
            entry = None
            if over is None:
                self._req_window.append(now)
                entry = _Entry(now, tokens)
                self._tok_window.append(entry)
                self._tok_used += tokens
            headers = {}
            if self._rpm_w is not None:
                reset = (self._req_window[-1] + self.window_s - now) if self._req_window else 0.0
                headers["x-ratelimit-limit-requests"] = str(self._rpm_w)
                headers["x-ratelimit-remaining-requests"] = str(max(0, self._rpm_w - len(self._req_window)))
                headers["x-ratelimit-reset-requests"] = f"{reset:.3f}s"
            if self._tpm_w is not None:
                reset = (self._tok_window[-1].t + self.window_s - now) if self._tok_window else 0.0
                headers["x-ratelimit-limit-tokens"] = str(self._tpm_w)
                headers["x-ratelimit-remaining-tokens"] = str(max(0, self._tpm_w - self._tok_used))
                headers["x-ratelimit-reset-tokens"] = f"{reset:.3f}s"
            if over and retry is not None:
                headers["retry-after"] = str(max(1, math.ceil(retry)))
                headers["retry-after-ms"] = str(max(1, math.ceil(retry * 1000)))
            return over, headers, entry, now

    def _complete(self, entry: _Entry, actual: int) -> int:
        """Settle an admitted request's charge to ``actual`` tokens (if refunds are on)."""
        with self._lock:
            if self.refund_unused and entry.tokens != actual:
                if self._tok_window and entry.t > time.monotonic() - self.window_s:
                    self._tok_used += actual - entry.tokens
                entry.tokens = actual
            return entry.tokens

    def _record(self, status: int, model: str | None, charged_tokens: int, prompt_tokens: int,
                completion_tokens: int, fault: str | None, *, mono: float | None = None, final_tokens: int = 0,
                items: list[str] | None = None) -> RequestRecord:
        rec = RequestRecord(time.time(), status, model, charged_tokens, prompt_tokens, completion_tokens, fault,
                            mono=mono if mono is not None else time.monotonic(), final_tokens=final_tokens,
                            items=items or [])
        with self._lock:
            self.log.append(rec)
        return rec

    def _draw_fault(self) -> str | None:
        with self._lock:
            if self.script:
                return self.script.popleft()
            for fault, p in self.fault_rates.items():
                if self._rng.random() < p:
                    return fault
        return None

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
        fault = self._draw_fault()
        if fault == "429":
            over: str | None
            over, rl_headers, entry, mono = "requests", {"retry-after": "1"}, None, time.monotonic()
        else:
            over, rl_headers, entry, mono = self._admit(charged)
        headers = {**base_headers, **rl_headers}
        if over:
            self._record(429, model, charged, prompt_tokens, 0, fault, mono=mono)
            kind = "requests" if over == "requests" else "tokens"
            limit = self._rpm_w if kind == "requests" else self._tpm_w
            return _error(429, f"Rate limit reached for {model} on {kind} per min (RPM/TPM): Limit {limit}. "
                          "Please try again later.", kind, "rate_limit_exceeded", headers=headers)
        assert entry is not None
        if fault == "reset":  # the connection drops before any answer (the call stays charged)
            self._record(0, model, charged, prompt_tokens, 0, fault, mono=mono, final_tokens=charged)
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        if fault == "timeout":  # no answer within the client's timeout
            self._record(0, model, charged, prompt_tokens, 0, fault, mono=mono, final_tokens=charged)
            await asyncio.sleep(self.hang_s)
            return _error(500, "The server had an error while processing your request.", "server_error",
                          headers=headers)
        if fault == "500":
            # The failed call stays charged at its estimate, as hosted providers do.
            self._record(500, model, charged, prompt_tokens, 0, fault, mono=mono, final_tokens=charged)
            return _error(500, "The server had an error while processing your request.", "server_error",
                          headers=headers)

        rf = body.get("response_format") or {}
        finish_reason, refusal = "stop", None
        if rf.get("type") == "json_schema":
            value = schema_instance(rf["json_schema"]["schema"], pad_tokens=self.completion_tokens)
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
        completion_tokens = min(max_tokens, math.ceil(len(content or refusal or "") / 4))
        logprobs = None
        if body.get("logprobs") and content:
            logprobs = {"content": _fake_logprobs(content), "refusal": None}
        delay = self.latency_s + self.latency_per_token_s * completion_tokens
        started = time.monotonic()
        if delay:
            await asyncio.sleep(delay)
        final = self._complete(entry, prompt_tokens + completion_tokens)
        headers["openai-processing-ms"] = str(int((time.monotonic() - started) * 1000))
        props = ((rf.get("json_schema") or {}).get("schema") or {}).get("properties", {})
        asked = [f"{a}/{q}" for a, v in props.items()
                 for q in (v.get("properties") or {})] if rf.get("type") == "json_schema" else []
        self._record(200, model, charged, prompt_tokens, completion_tokens, fault, mono=mono, final_tokens=final,
                     items=asked)
        return web.json_response({
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_raygrade_fake",
            "choices": [{"index": 0, "finish_reason": finish_reason, "logprobs": logprobs,
                         "message": {"role": "assistant", "content": content, "refusal": refusal}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }, headers=headers)


def audit_windows(log: list[RequestRecord], window_s: float = WINDOW_S) -> dict[str, float]:
    """The busiest ``window_s`` window in a server log, from admitted requests' final charges.

    Returns:
        ``{"admitted", "rejected_429", "max_window_requests", "max_window_tokens"}``: the
        largest number of requests / tokens admitted in any window starting at an admission.
    """
    adm = sorted((r for r in log if r.final_tokens > 0 or r.status == 200), key=lambda r: r.mono)
    times = [r.mono for r in adm]
    max_req = max_tok = 0
    j, tok = 0, 0
    for i, r in enumerate(adm):  # two pointers over [times[i], times[i] + window_s)
        while j < len(adm) and times[j] < times[i] + window_s:
            tok += adm[j].final_tokens
            j += 1
        max_req, max_tok = max(max_req, j - i), max(max_tok, tok)
        tok -= r.final_tokens
    return {"admitted": len(adm), "rejected_429": sum(1 for r in log if r.status == 429),
            "max_window_requests": max_req, "max_window_tokens": max_tok}


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

        from raygrade.engine.local_vllm import free_port

        self.port = free_port()
        cmd = [sys.executable, "-m", "raygrade.testing.fake_openai", "--port", str(self.port)]
        for k, v in options.items():
            if v is not None:
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
FAKE_TOKEN_LOGPROB = math.log(0.9)


def _fake_logprobs(content: str) -> list[dict[str, Any]]:
    """OpenAI-shaped ``logprobs.content``: the text in 4-character tokens, each at
    :data:`FAKE_TOKEN_LOGPROB`; digits and ``.`` are single tokens, as in real BPE vocabularies."""
    out = []
    for tok in re.findall(r"\d|\.|[^\d.]{1,4}", content):
        out.append({"token": tok, "logprob": FAKE_TOKEN_LOGPROB, "bytes": list(tok.encode()), "top_logprobs": []})
    return out


def _count_strings(value: Any) -> int:
    if isinstance(value, dict):
        return sum(_count_strings(v) for v in value.values())
    if isinstance(value, list):
        return sum(_count_strings(v) for v in value)
    return 1 if isinstance(value, str) else 0


def _pad_strings(value: Any, pad: str) -> None:
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in list(items):
        if isinstance(v, str):
            value[k] = v + pad
        else:
            _pad_strings(v, pad)


def _bump_scores(value: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "score" and isinstance(v, (int, float)):
                value[k] = v + 1000
            else:
                _bump_scores(v)


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
    a = ap.parse_args()
    srv = FakeOpenAIServer(rpm=a.rpm, tpm=a.tpm, window_s=a.window_s, latency_s=a.latency_s,
                           latency_per_token_s=a.latency_per_token_s, completion_tokens=a.completion_tokens,
                           refund_unused=not a.no_refund, api_key=a.api_key, port=a.port).start()
    print(f"fake OpenAI server on {srv.base_url}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":  # pragma: no cover
    main()
