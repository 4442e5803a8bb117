"""The fake OpenAI-compatible server: HTTP handlers, sliding-window RPM/TPM accounting, faults."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import random
import threading
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING

from raygrade._optional import import_optional

if TYPE_CHECKING:
    from aiohttp import web
else:
    web = import_optional("aiohttp.web", "fake", "the fake OpenAI-compatible server")

from raygrade.testing.fake_openai.content import asked_items, completion, estimate_prompt_tokens
from raygrade.testing.fake_openai.records import FAULTS, WINDOW_S, RequestRecord
from raygrade.testing.fake_openai.runner import ThreadedApp


@dataclasses.dataclass
class _Entry:
    t: float
    tokens: int


def _error(status: int, message: str, etype: str, code: str | None = None, param: str | None = None,
           headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": etype, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)




class FakeOpenAIServer(ThreadedApp):
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
        prompt_token_multiplier: The server counts (charges and reports) this many times the
            API's prompt-token rule: a provider whose count disagrees with raygrade's estimate.
        processing_ms_header: Send ``openai-processing-ms`` (many compatible servers do not).
        count_rejected: Charge a 429'd request at its size anyway (OpenAI's documented rule);
            by default a rejection is not charged.
        minute_headers: ``x-ratelimit-limit-*`` give the per-minute limits (``rpm``/``tpm``) and
            ``remaining`` that less the window's use, as OpenAI's do while it enforces a limit
            over a shorter ``window_s``; by default they give the window's own limit.
    """

    def __init__(self, *, rpm: int | None = None, tpm: int | None = None, window_s: float = WINDOW_S,
                 latency_s: float = 0.0,
                 latency_per_token_s: float = 0.0, refund_unused: bool = True,
                 fault_rates: dict[str, float] | None = None, seed: int = 0, completion_tokens: int | None = None,
                 api_key: str | None = "sk-test", host: str = "127.0.0.1", port: int = 0, hang_s: float = 30.0,
                 prompt_token_multiplier: float = 1.0, processing_ms_header: bool = True,
                 count_rejected: bool = False, minute_headers: bool = False):
        self.rpm, self.tpm = rpm, tpm
        self.hang_s = hang_s
        self.window_s = window_s
        # Limits per window, in the window's units.
        self._rpm_w = int(rpm * window_s / WINDOW_S) if rpm is not None else None
        self._tpm_w = int(tpm * window_s / WINDOW_S) if tpm is not None else None
        self.latency_s, self.latency_per_token_s = latency_s, latency_per_token_s
        self.refund_unused = refund_unused
        # Ways a provider raygrade does not control disagrees with it: its own prompt count,
        # no processing-time header, rejected calls charged (OpenAI's rule) or not.
        self.prompt_token_multiplier = prompt_token_multiplier
        self.processing_ms_header = processing_ms_header
        self.count_rejected = count_rejected
        self.minute_headers = minute_headers
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
        self.last_headers: dict[str, str] = {}
        self.last_prompt_cache_key: str | None = None  # OpenAI's prompt_cache_key of the last request
        self._prefixes: set[str] = set()  # system messages seen (the prompt cache)
        self._req_window: deque[float] = deque()
        self._tok_window: deque[_Entry] = deque()
        self._tok_used = 0
        self._lock = threading.Lock()

    # -- lifecycle (ThreadedApp: start, stop, base_url) ----------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        # Test-only endpoints for a server run in another process (benchmarks).
        app.router.add_get("/_raygrade/log", self._get_log)
        app.router.add_post("/_raygrade/reset", self._post_reset)
        return app

    def reset(self) -> None:
        """Forget the log, the scripted faults and the current window."""
        with self._lock:
            self.log.clear()
            self.script.clear()
            self._prefixes.clear()
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
            if over is not None and self.count_rejected:  # charged although rejected, as OpenAI counts them
                self._req_window.append(now)
                self._tok_window.append(_Entry(now, tokens))
                self._tok_used += tokens
            if over is None:
                self._req_window.append(now)
                entry = _Entry(now, tokens)
                self._tok_window.append(entry)
                self._tok_used += tokens
            headers = {}
            if self._rpm_w is not None:
                reset = (self._req_window[-1] + self.window_s - now) if self._req_window else 0.0
                limit = self.rpm if self.minute_headers and self.rpm is not None else self._rpm_w
                headers["x-ratelimit-limit-requests"] = str(limit)
                headers["x-ratelimit-remaining-requests"] = str(max(0, limit - len(self._req_window)))
                headers["x-ratelimit-reset-requests"] = f"{reset:.3f}s"
            if self._tpm_w is not None:
                reset = (self._tok_window[-1].t + self.window_s - now) if self._tok_window else 0.0
                limit = self.tpm if self.minute_headers and self.tpm is not None else self._tpm_w
                headers["x-ratelimit-limit-tokens"] = str(limit)
                headers["x-ratelimit-remaining-tokens"] = str(max(0, limit - self._tok_used))
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

    def _cached(self, messages: list) -> int:
        """OpenAI's automatic prompt cache, for the system message: a prefix of at least 1,024 tokens
        seen before is read from the cache in 128-token steps (OpenAI, "Prompt caching")."""
        system = [m for m in messages if isinstance(m, dict) and m.get("role") == "system"]
        if not system:
            return 0
        n = estimate_prompt_tokens(system)
        key = json.dumps(system, sort_keys=True)
        with self._lock:
            hit = key in self._prefixes
            self._prefixes.add(key)
        return (n // 128) * 128 if hit and n >= 1024 else 0

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
        # What the last caller sent besides its key (attribution headers such as OpenRouter's).
        self.last_headers = {k.lower(): v for k, v in request.headers.items() if k.lower() != "authorization"}
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
        self.last_prompt_cache_key = body.get("prompt_cache_key")
        if not model or not isinstance(messages, list) or not messages:
            self._record(400, model, 0, 0, 0, None)
            return _error(400, "'messages' is a required property", "invalid_request_error",
                          param="messages", headers=base_headers)
        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 4096)
        prompt_tokens = math.ceil(estimate_prompt_tokens(messages) * self.prompt_token_multiplier)
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

        answer = completion(body, prompt_tokens, fault=fault, pad_tokens=self.completion_tokens)
        answer["usage"]["prompt_tokens_details"] = {"cached_tokens": self._cached(messages)}
        completion_tokens = answer["usage"]["completion_tokens"]
        delay = self.latency_s + self.latency_per_token_s * completion_tokens
        started = time.monotonic()
        if delay:
            await asyncio.sleep(delay)
        final = self._complete(entry, prompt_tokens + completion_tokens)
        if self.processing_ms_header:
            headers["openai-processing-ms"] = str(int((time.monotonic() - started) * 1000))
        self._record(200, model, charged, prompt_tokens, completion_tokens, fault, mono=mono, final_tokens=final,
                     items=asked_items(body))
        return web.json_response(answer, headers=headers)
