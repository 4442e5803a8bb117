"""Gemini through Google's Gemini API (the official ``google-genai`` SDK), not its OpenAI
compatibility layer.

- **Request.** System messages become ``system_instruction`` (the stable prefix, first, so the
  API's implicit cache can match it); ``image_url`` parts with ``data:`` URLs become inline
  ``Part.from_bytes`` parts; the output is held to the grading schema with
  ``response_mime_type: application/json`` and ``response_json_schema``.
- **Usage.** ``prompt_tokens`` is ``prompt_token_count`` (cached tokens included), completion
  tokens are ``candidates_token_count`` + ``thoughts_token_count``;
  :attr:`ChatResult.cached_tokens` is ``cached_content_token_count``.
- **Errors** map at :func:`map_genai_errors`: 429 ``RESOURCE_EXHAUSTED`` carries its wait only in
  the body (``RetryInfo.retryDelay``, no ``Retry-After`` header) and names the quota that ran out
  (``QuotaFailure``). A per-minute quota is :class:`RateLimitedError` with that wait; a per-day
  quota (requests per day, reset at midnight Pacific time or in ``rate_limit.rpd_reset_zone``) is
  :class:`QuotaExhaustedError` until
  then (``reset_at``), never retried before the reset: the limiter then sends nothing on the key
  before it (:mod:`raygrade.ratelimit.daily`). ``finish_reason`` ``SAFETY``/``PROHIBITED_CONTENT``/… is
  reported as a refusal.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from raygrade._optional import import_optional
from raygrade.config import ProviderConfig
from raygrade.config.rate_limit import quota_zone
from raygrade.errors import (
    ProviderConnectionError,
    ProviderStatusError,
    ProviderTimeoutError,
    QuotaExhaustedError,
    RateLimitedError,
)
from raygrade.protocol import Usage
from raygrade.providers.base import ChatRequest, ChatResult, data_url, split_system
from raygrade.ratelimit.daily import PACIFIC, next_midnight

if TYPE_CHECKING:
    from google import genai
    from google.genai import errors as genai_errors
    from google.genai import types
else:
    genai = import_optional("google.genai", "gemini", "the Gemini provider (kind: gemini)")
    genai_errors = import_optional("google.genai.errors", "gemini", "the Gemini provider (kind: gemini)")
    types = import_optional("google.genai.types", "gemini", "the Gemini provider (kind: gemini)")

#: Finish reasons that mean the model would not answer.
REFUSALS = frozenset({"SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "RECITATION", "IMAGE_SAFETY"})
_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def next_quota_day(now: dt.datetime | None = None, zone: dt.tzinfo = PACIFIC) -> dt.datetime:
    """The next midnight in ``zone`` (Pacific time by default) after ``now`` (aware; UTC now by
    default): when a per-day quota resets."""
    reset = next_midnight((now or dt.datetime.now(dt.UTC)).timestamp(), zone)
    return dt.datetime.fromtimestamp(reset, zone)


def quota_details(details: Any) -> tuple[float | None, list[str]]:
    """``(RetryInfo.retryDelay in seconds, QuotaFailure quota ids)`` from a Google RPC error's
    ``details`` list (``None`` / ``[]`` where absent or unparsable)."""
    delay, quotas = None, []
    for d in details if isinstance(details, list) else []:
        if not isinstance(d, dict):
            continue
        kind = str(d.get("@type", ""))
        if kind.endswith("google.rpc.RetryInfo") and (m := _DELAY.match(str(d.get("retryDelay", "")))):
            delay = float(m.group(1))
        elif kind.endswith("google.rpc.QuotaFailure"):
            quotas += [str(v.get("quotaId", "")) for v in d.get("violations") or [] if isinstance(v, dict)]
    return delay, quotas


def _error_details(exc: Any) -> Any:
    details = getattr(exc, "details", None)
    if isinstance(details, dict):  # the SDK keeps the whole body ({"error": {...}}) or the error itself
        details = (details.get("error") or details).get("details")
    return details


@contextlib.contextmanager
def map_genai_errors(now: dt.datetime | None = None, zone: dt.tzinfo = PACIFIC) -> Iterator[None]:
    """Translate ``google-genai``'s exceptions into raygrade's tree (the one boundary); a per-day
    quota resets at the next midnight in ``zone`` (``rate_limit.rpd_reset_zone``).

    Messages name the status and quota only: the API's messages may echo prompt text.
    """
    import httpx

    try:
        yield
    except genai_errors.APIError as exc:
        status = int(exc.code or 500)
        code = str(exc.status) if exc.status else None
        if status == 429:
            delay, quotas = quota_details(_error_details(exc))
            if any("perday" in q.lower() for q in quotas):
                reset = next_quota_day(now, zone)
                raise QuotaExhaustedError(f"provider quota {', '.join(quotas)} is spent until {reset.isoformat()}",
                                          provider_status=429, code=quotas[0], reset_at=reset.timestamp(),
                                          from_provider=True) from exc
            raise RateLimitedError(f"provider answered HTTP 429 ({code or 'RESOURCE_EXHAUSTED'}"
                                   f"{': ' + ', '.join(quotas) if quotas else ''})", provider_status=429,
                                   retry_after_s=delay, code=code) from exc
        raise ProviderStatusError(f"provider answered HTTP {status} ({code or 'error'})", provider_status=status,
                                  code=code) from exc
    except httpx.TimeoutException as exc:
        raise ProviderTimeoutError("provider request timed out") from exc
    except httpx.TransportError as exc:
        raise ProviderConnectionError(f"provider connection failed: {type(exc).__name__}") from exc


def _parts(content: Any) -> list[Any]:
    if isinstance(content, str):
        return [types.Part.from_text(text=content)]
    out = []
    for part in content:
        if part.get("type") == "text":
            out.append(types.Part.from_text(text=part.get("text", "")))
        elif part.get("type") == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            if (parsed := data_url(url)) is not None:
                out.append(types.Part.from_bytes(data=base64.b64decode(parsed[1]), mime_type=parsed[0]))
            else:
                out.append(types.Part.from_uri(file_uri=url, mime_type="image/png"))
    return out


def generate_request(config: ProviderConfig, request: ChatRequest) -> dict[str, Any]:
    """The keyword arguments of ``client.aio.models.generate_content`` for ``request``."""
    system, turns = split_system(request.messages)
    cfg: dict[str, Any] = {"temperature": request.temperature, "max_output_tokens": request.max_tokens}
    if system:
        cfg["system_instruction"] = system
    if request.json_schema is not None and config.structured_output == "json_schema":
        cfg["response_mime_type"] = "application/json"
        cfg["response_json_schema"] = request.json_schema
    contents = [types.Content(role="model" if m["role"] == "assistant" else "user", parts=_parts(m["content"]))
                for m in turns]
    return {"model": request.model or config.model, "contents": contents,
            "config": types.GenerateContentConfig(**cfg)}


def generate_result(response: Any, model: str, sent_at: float | None = None) -> ChatResult:
    """Reduce a ``GenerateContentResponse`` to a :class:`ChatResult`."""
    cand = (response.candidates or [None])[0]
    finish = str(getattr(cand, "finish_reason", None) or "STOP").rsplit(".", 1)[-1]
    parts = (cand.content.parts or []) if cand is not None and cand.content is not None else []
    text = "".join(p.text for p in parts if getattr(p, "text", None) and not getattr(p, "thought", False))
    refusal = None
    if finish in REFUSALS or cand is None:
        text, refusal = "", f"blocked ({finish if cand is not None else 'no candidate'})"
    u = response.usage_metadata
    usage = None
    if u is not None:
        usage = Usage(prompt_tokens=u.prompt_token_count or 0,
                      completion_tokens=(u.candidates_token_count or 0) + (u.thoughts_token_count or 0))
    http = getattr(response, "sdk_http_response", None)
    headers = {k.lower(): v for k, v in (getattr(http, "headers", None) or {}).items()}
    return ChatResult(content=text or None, finish_reason="length" if finish == "MAX_TOKENS" else "stop",
                      usage=usage, model=response.model_version or model, headers=headers, refusal=refusal,
                      sent_at=sent_at, cached_tokens=(u.cached_content_token_count or 0) if u is not None else 0)


class GeminiProvider:
    """Gemini models through the Gemini API.

    Args:
        config: The provider's config (``kind: gemini``; ``base_url`` ``None`` for Google's endpoint).
        client: A ``google.genai.Client`` to use (tests inject one); built from config otherwise.

    Raises:
        ConfigError: the API key's variable is unset.
        MissingDependencyError: the ``gemini`` extra is not installed.
    """

    def __init__(self, config: ProviderConfig, *, client: Any = None):
        self.config = config
        options: dict[str, Any] = {"timeout": int(config.timeout_s * 1000),
                                   "retry_options": types.HttpRetryOptions(attempts=1)}  # raygrade retries
        if config.base_url:
            options["base_url"] = config.base_url
        if config.extra_headers:
            options["headers"] = dict(config.extra_headers)
        self._client = client or genai.Client(api_key=config.api_key().get_secret_value(),
                                              http_options=types.HttpOptions(**options))

    async def chat(self, request: ChatRequest) -> ChatResult:
        """One ``generateContent`` call (no retries here).

        Raises:
            RateLimitedError, QuotaExhaustedError, ProviderStatusError, ProviderTimeoutError,
            ProviderConnectionError: translated by :func:`map_genai_errors`.
        """
        kwargs = generate_request(self.config, request)
        sent_at = time.monotonic()
        with map_genai_errors(zone=quota_zone(self.config.rate_limit.rpd_reset_zone)):
            response = await self._client.aio.models.generate_content(**kwargs)
        return generate_result(response, kwargs["model"], sent_at)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.aio.aclose()
