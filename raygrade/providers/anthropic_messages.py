"""Claude through Anthropic's own Messages API (the official ``anthropic`` SDK), not its
OpenAI-compatibility layer (which Anthropic documents as not for production: it ignores
``response_format`` and strict schemas and has no prompt caching).

- **Request.** The grader's OpenAI-shaped messages become a Messages request: system messages
  become ``system`` (one text block, marked ``cache_control: ephemeral``: it is every request's
  stable prefix, see :func:`raygrade.prompts.build_messages`), ``image_url`` parts with ``data:``
  URLs become base64 ``image`` blocks.
- **Structured output** natively (``structured_output: json_schema``: ``output_config.format``
  with the grading schema, Anthropic's "Structured outputs") or, for models without it
  (``structured_output: tool``), by tool use: one tool whose ``input_schema`` is the grading
  schema, forced with ``tool_choice``; the answer is that tool call's ``input``. A refusal
  (``stop_reason: refusal``) is reported as the grader's refusal.
- **Sampling**: the SDK (2.x) has no ``temperature``; requests use the model's default (put
  sampling parameters the model accepts in ``extra_body``).
- **Usage.** ``prompt_tokens`` is every input token (uncached + cache writes + cache reads);
  :attr:`ChatResult.cached_tokens` the cache reads.
- **Rate-limit headers** ``anthropic-ratelimit-{requests,input-tokens,output-tokens}-{limit,
  remaining,reset}`` (reset: an RFC 3339 time) are handed to the limiter under OpenAI-style names
  (``x-ratelimit-*-{requests,input-tokens,output-tokens}``, reset as seconds from now): it keeps
  requests, input tokens (``itpm``: the prompt, cache reads free) and output tokens (``otpm``:
  ``max_tokens`` until the answer settles) apart, as Anthropic does.
- **Errors** map at :func:`map_anthropic_errors`, the one boundary: 429 ``rate_limit_error`` →
  :class:`RateLimitedError` (with ``retry-after``), 529 ``overloaded_error`` and 5xx → retryable
  :class:`ProviderStatusError`, other statuses → :class:`ProviderStatusError` with the error type
  as ``code``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import inspect
import json
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from raygrade._optional import import_optional
from raygrade.config import ProviderConfig
from raygrade.errors import (
    OutputParseError,
    ProviderConnectionError,
    ProviderStatusError,
    ProviderTimeoutError,
    RateLimitedError,
)
from raygrade.protocol import Usage
from raygrade.providers.base import ChatRequest, ChatResult, data_url, split_system
from raygrade.retry import parse_retry_after

if TYPE_CHECKING:
    import anthropic
else:
    anthropic = import_optional("anthropic", "anthropic", "the Anthropic provider (kind: anthropic)")

#: Anthropic's ``stop_reason`` → OpenAI's ``finish_reason``.
FINISH_REASONS = {"end_turn": "stop", "tool_use": "stop", "stop_sequence": "stop", "max_tokens": "length",
                  "pause_turn": "stop", "refusal": "stop"}
#: Anthropic's rate-limit header dimensions → the limiter's (OpenAI-style names).
HEADER_DIMENSIONS = {"requests": "requests", "input-tokens": "input-tokens", "output-tokens": "output-tokens"}
_SENT_AT = "raygrade_sent_at"


def _image_block(url: str) -> dict[str, Any]:
    """A base64 ``image`` block from a ``data:`` URL (any other URL goes as an ``url`` image source)."""
    if (parsed := data_url(url)) is not None:
        return {"type": "image", "source": {"type": "base64", "media_type": parsed[0], "data": parsed[1]}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    out = []
    for part in content:
        if part.get("type") == "text":
            out.append({"type": "text", "text": part.get("text", "")})
        elif part.get("type") == "image_url":
            out.append(_image_block((part.get("image_url") or {}).get("url", "")))
    return out


def messages_request(config: ProviderConfig, request: ChatRequest) -> dict[str, Any]:
    """The keyword arguments of ``client.messages.create`` for ``request`` under ``config``."""
    system, turns = split_system(request.messages)
    kwargs: dict[str, Any] = {
        "model": request.model or config.model, "max_tokens": request.max_tokens,
        "messages": [{"role": m["role"], "content": _blocks(m["content"])} for m in turns],
    }
    if system:
        kwargs["system"] = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
    if request.json_schema is not None and config.structured_output == "json_schema":
        kwargs["output_config"] = {"format": {"type": "json_schema", "schema": request.json_schema}}
    elif request.json_schema is not None and config.structured_output == "tool":
        kwargs["tools"] = [{"name": request.schema_name, "input_schema": request.json_schema,
                            "description": "Record the grades: call this once with every grade."}]
        kwargs["tool_choice"] = {"type": "tool", "name": request.schema_name}
    return kwargs


def openai_rate_limit_headers(headers: Mapping[str, str], now: float | None = None) -> dict[str, str]:
    """Anthropic's ``anthropic-ratelimit-*`` headers under OpenAI's ``x-ratelimit-*`` names.

    ``reset`` (an RFC 3339 time when the bucket is full again) becomes seconds from ``now``
    (``time.time()``), e.g. ``"12.5s"``; Anthropic's combined ``tokens`` dimension is left out
    (the limiter keeps input and output apart).
    """
    now = time.time() if now is None else now
    out: dict[str, str] = {}
    lower = {k.lower(): v for k, v in headers.items()}
    for theirs, ours in HEADER_DIMENSIONS.items():
        for what in ("limit", "remaining"):
            if (v := lower.get(f"anthropic-ratelimit-{theirs}-{what}")) is not None:
                out[f"x-ratelimit-{what}-{ours}"] = v
        if (reset := lower.get(f"anthropic-ratelimit-{theirs}-reset")) is not None:
            try:
                when = dt.datetime.fromisoformat(reset.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
            out[f"x-ratelimit-reset-{ours}"] = f"{max(0.0, when - now):.3f}s"
    return out


@contextlib.contextmanager
def map_anthropic_errors() -> Iterator[None]:
    """Translate the ``anthropic`` SDK's exceptions into raygrade's tree (the one boundary).

    Error bodies are summarised by type and status only: provider messages may echo prompt text.
    """
    try:
        yield
    except anthropic.APITimeoutError as exc:
        raise ProviderTimeoutError("provider request timed out") from exc
    except anthropic.APIConnectionError as exc:
        raise ProviderConnectionError(f"provider connection failed: {type(exc.__cause__).__name__}") from exc
    except anthropic.APIStatusError as exc:
        headers = {k.lower(): v for k, v in exc.response.headers.items()}
        body = exc.body if isinstance(exc.body, dict) else {}
        err = body.get("error")
        etype = err.get("type") if isinstance(err, dict) else None
        cls = RateLimitedError if exc.status_code == 429 else ProviderStatusError
        raise cls(f"provider answered HTTP {exc.status_code} ({etype or 'error'})",
                  provider_status=exc.status_code, retry_after_s=parse_retry_after(headers),
                  rate_limit_headers=openai_rate_limit_headers(headers),
                  code=str(etype) if etype is not None else None) from exc
    except anthropic.APIResponseValidationError as exc:
        raise OutputParseError("provider response did not match the Messages API schema") from exc


def messages_result(message: Any, headers: dict[str, str], model: str, sent_at: float | None = None) -> ChatResult:
    """Reduce an Anthropic ``Message`` to a :class:`ChatResult`: the forced tool call's input as
    JSON text (else the text blocks), usage with cache reads, headers under OpenAI's names."""
    tool = next((b for b in message.content if b.type == "tool_use"), None)
    text = "".join(b.text for b in message.content if b.type == "text")
    content = json.dumps(tool.input) if tool is not None else (text or None)
    refusal = None
    if message.stop_reason == "refusal":
        content, refusal = None, text or "refused"
    u = message.usage
    cached = u.cache_read_input_tokens or 0
    usage = Usage(prompt_tokens=u.input_tokens + (u.cache_creation_input_tokens or 0) + cached,
                  completion_tokens=u.output_tokens)
    return ChatResult(content=content, finish_reason=FINISH_REASONS.get(message.stop_reason or "", "stop"),
                      usage=usage, model=message.model or model, headers={**headers,
                                                                          **openai_rate_limit_headers(headers)},
                      refusal=refusal, sent_at=sent_at, cached_tokens=cached)


async def _stamp_send(request: Any) -> None:
    request.extensions[_SENT_AT] = time.monotonic()


class AnthropicProvider:
    """Claude models through the Messages API.

    Args:
        config: The provider's config (``kind: anthropic``; ``base_url`` ``None`` for Anthropic's API).
        client: An ``anthropic.AsyncAnthropic`` to use (tests inject one); built from config otherwise.

    Raises:
        ConfigError: the API key's variable is unset.
        MissingDependencyError: the ``anthropic`` extra is not installed.
    """

    def __init__(self, config: ProviderConfig, *, client: anthropic.AsyncAnthropic | None = None):
        self.config = config
        self._client = client or anthropic.AsyncAnthropic(
            api_key=config.api_key().get_secret_value(), base_url=config.base_url, timeout=config.timeout_s,
            max_retries=0, default_headers=config.extra_headers or None,
            http_client=anthropic.DefaultAsyncHttpxClient(event_hooks={"request": [_stamp_send]}))

    async def chat(self, request: ChatRequest) -> ChatResult:
        """One Messages call (no retries here).

        Raises:
            RateLimitedError, ProviderStatusError, ProviderTimeoutError, ProviderConnectionError,
            OutputParseError: translated by :func:`map_anthropic_errors`.
        """
        kwargs = messages_request(self.config, request)
        if self.config.extra_body:
            kwargs["extra_body"] = self.config.extra_body
        with map_anthropic_errors():
            raw = await self._client.messages.with_raw_response.create(**kwargs)
            message = raw.parse()
            if inspect.isawaitable(message):  # SDK 2.x: the async client's raw response parses asynchronously
                message = await message
        return messages_result(message, {k.lower(): v for k, v in raw.headers.items()}, kwargs["model"],
                               raw.http_request.extensions.get(_SENT_AT))

    async def close(self) -> None:
        await self._client.close()
