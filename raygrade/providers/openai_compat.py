"""One OpenAI-compatible chat provider on ``openai.AsyncOpenAI``.

It covers hosted OpenAI, OpenRouter and any vLLM server (GPU nodes or the
embedded CPU one) by configuration alone. openai-python's own retries are
turned off (``max_retries=0``): raygrade retries in :mod:`raygrade.retry`, one
try per rate-limiter reservation. :func:`map_openai_errors` is the one place
where openai's exceptions become raygrade's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import openai
from openai.types.chat import ChatCompletion

from raygrade.config import ProviderConfig
from raygrade.errors import (
    ConfigError,
    OutputParseError,
    ProviderConnectionError,
    ProviderStatusError,
    ProviderTimeoutError,
    RateLimitedError,
)
from raygrade.protocol import Usage
from raygrade.providers.base import ChatRequest, ChatResult
from raygrade.retry import parse_retry_after

logger = logging.getLogger(__name__)


#: Where hosted OpenAI answers when ``base_url`` is not set.
OPENAI_BASE_URL = "https://api.openai.com/v1"


def check_provider(config: ProviderConfig, *, timeout_s: float = 10.0) -> None:
    """Fail at deploy time, not once per job: the API key is set, the endpoint answers, and the
    model is among those ``GET /models`` lists (when the endpoint lists models).

    A 5xx, a 429 or a ``/models`` route the server does not have is not a configuration error
    and passes (logged). Keys never appear in messages.

    Raises:
        ConfigError: the key's variable is unset, the key is rejected (401/403), the base URL
            cannot be reached, or the model is not served there.
    """
    import httpx

    key = config.api_key()
    base = (config.base_url or OPENAI_BASE_URL).rstrip("/")
    try:
        r = httpx.get(f"{base}/models", headers={"Authorization": f"Bearer {key.get_secret_value()}"},
                      timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise ConfigError(f"provider {config.name!r}: {base} cannot be reached ({type(exc).__name__})",
                          param="base_url") from None
    if r.status_code in (401, 403):
        raise ConfigError(f"provider {config.name!r}: {base} rejected the API key from "
                          f"{config.api_key_env or 'the configuration'} (HTTP {r.status_code})", param="api_key_env")
    if r.status_code != 200:
        logger.warning("provider %r: GET %s/models answered %d; not checking the model", config.name, base,
                       r.status_code)
        return
    try:
        served = [m["id"] for m in r.json().get("data", []) if isinstance(m, dict) and "id" in m]
    except (ValueError, AttributeError):
        return
    if served and config.model not in served:
        shown = ", ".join(served[:10]) + (", …" if len(served) > 10 else "")
        raise ConfigError(f"provider {config.name!r}: model {config.model!r} is not served at {base} "
                          f"(it lists: {shown})", param="model")


@contextlib.contextmanager
def map_openai_errors() -> Iterator[None]:
    """Translate openai-python exceptions into raygrade's tree (the one boundary).

    Error bodies are summarised by type and status only: provider messages may
    echo prompt text, which holds student answers.
    """
    try:
        yield
    except openai.APITimeoutError as exc:
        raise ProviderTimeoutError("provider request timed out") from exc
    except openai.APIConnectionError as exc:
        raise ProviderConnectionError(f"provider connection failed: {type(exc.__cause__).__name__}") from exc
    except openai.APIStatusError as exc:
        headers = {k.lower(): v for k, v in exc.response.headers.items()}
        retry_after = parse_retry_after(headers)
        body = exc.body if isinstance(exc.body, dict) else {}
        err = body.get("error", body) if isinstance(body, dict) else {}
        etype = err.get("type") if isinstance(err, dict) else None
        code = err.get("code") if isinstance(err, dict) else None
        cls = RateLimitedError if exc.status_code == 429 else ProviderStatusError
        raise cls(f"provider answered HTTP {exc.status_code} ({etype or 'error'})",
                  provider_status=exc.status_code, retry_after_s=retry_after,
                  rate_limit_headers={k: v for k, v in headers.items() if k.startswith("x-ratelimit-")},
                  code=str(code) if code is not None else None) from exc
    except openai.APIResponseValidationError as exc:
        raise OutputParseError("provider response did not match the OpenAI schema") from exc


def chat_request(config: ProviderConfig, request: ChatRequest) -> dict[str, Any]:
    """The body of one ``POST /v1/chat/completions`` for ``request`` under ``config`` (OpenAI's field names).

    ``response_format`` is a strict JSON schema when the request has one and the provider
    supports structured output; ``logprobs`` when the provider scores confidence from them.
    """
    body: dict[str, Any] = {"model": request.model or config.model, "messages": request.messages,
                            "max_tokens": request.max_tokens, "temperature": request.temperature}
    if request.json_schema is not None and config.structured_output == "json_schema":
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": request.schema_name, "schema": request.json_schema, "strict": True}}
    if config.score_logprobs:
        body["logprobs"] = True
    if request.cache_key and config.sends_prompt_cache_key:
        body["prompt_cache_key"] = request.cache_key
    return body


def chat_result(completion: Any, headers: dict[str, str], model: str, sent_at: float | None = None) -> ChatResult:
    """Reduce an OpenAI ``ChatCompletion`` (or one of the same shape) to a :class:`ChatResult`.

    Raises:
        OutputParseError: the completion has no choices.
    """
    if not completion.choices:
        raise OutputParseError("provider returned no choices")
    choice = completion.choices[0]
    usage, cached = None, 0
    if completion.usage is not None:
        usage = Usage(prompt_tokens=completion.usage.prompt_tokens or 0,
                      completion_tokens=completion.usage.completion_tokens or 0)
        details = getattr(completion.usage, "prompt_tokens_details", None)
        cached = (getattr(details, "cached_tokens", None) or 0) if details is not None else 0
    logprobs = getattr(choice, "logprobs", None)
    return ChatResult(
        content=choice.message.content,
        finish_reason=choice.finish_reason,
        usage=usage,
        model=completion.model or model,
        headers=headers,
        refusal=getattr(choice.message, "refusal", None),
        token_logprobs=[(t.token, t.logprob) for t in logprobs.content] if logprobs is not None and logprobs.content
        else None,
        sent_at=sent_at,
        cached_tokens=cached,
    )


#: The header by which openai-python answers a request with its raw response (status, headers,
#: ``.parse()``), as ``with_raw_response`` asks for it.
_RAW_RESPONSE_HEADER = "X-Stainless-Raw-Response"

#: Request extension where :func:`_stamp_send` records when a request left.
_SENT_AT = "raygrade_sent_at"


#: Fault injection for benchmarks (``benchmarks/rate_limit.py``): seconds every request waits
#: between the limiter's grant and leaving, as on an overloaded node. Unset in production.
SEND_DELAY_ENV = "RAYGRADE_FAULT_SEND_DELAY_S"


async def _stamp_send(request: Any) -> None:
    """httpx request hook: the moment the request is handed to the transport, per attempt."""
    if delay := float(os.environ.get(SEND_DELAY_ENV) or 0):
        await asyncio.sleep(delay)
    request.extensions[_SENT_AT] = time.monotonic()


class OpenAICompatibleProvider:
    """Chat completions with JSON-schema structured output.

    Args:
        config: The provider's config (model, base URL, key variable, timeout).
        base_url: Overrides ``config.base_url`` (the embedded engine's address).
        client: An ``openai.AsyncOpenAI`` to use (tests inject one); built from config otherwise.
    """

    def __init__(self, config: ProviderConfig, *, base_url: str | None = None,
                 client: openai.AsyncOpenAI | None = None):
        self.config = config
        self.base_url = base_url or config.base_url
        self._client = client or openai.AsyncOpenAI(
            api_key=config.api_key().get_secret_value(),
            base_url=self.base_url,
            timeout=config.timeout_s,
            max_retries=0,
            default_headers=config.extra_headers or None,
            # Record when each request leaves: the limiter charges from then, not from the grant.
            http_client=openai.DefaultAsyncHttpxClient(event_hooks={"request": [_stamp_send]}),
        )

    async def chat(self, request: ChatRequest) -> ChatResult:
        """One chat completion (no retries here); the output constrained by
        ``response_format={"type": "json_schema", ...}`` when the request has a schema and the
        provider supports it.

        Raises:
            ProviderStatusError, RateLimitedError, ProviderTimeoutError,
            ProviderConnectionError: translated by :func:`map_openai_errors`.
        """
        body = chat_request(self.config, request)
        options: dict[str, Any] = {"headers": {_RAW_RESPONSE_HEADER: "true"}}
        if self.config.extra_body:
            options["extra_json"] = self.config.extra_body
        with map_openai_errors():
            # ``client.post`` rather than ``chat.completions.create``: the same request and
            # response handling, without ``create``'s walk of the body against its TypedDicts
            # (no aliases or formats in a chat body; ≈ 12 % of a Grader's CPU with a page image
            # per student, measured with py-spy). The body is ``chat_request``'s, built here.
            raw: Any = await self._client.post(  # type: ignore[call-overload]  # a raw response (the header)
                "/chat/completions", cast_to=ChatCompletion, body=body, options=options)
            completion = raw.parse()
        sent_at = raw.http_request.extensions.get(_SENT_AT)
        return chat_result(completion, {k.lower(): v for k, v in raw.headers.items()}, body["model"], sent_at)

    async def close(self) -> None:
        await self._client.close()
