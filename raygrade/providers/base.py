"""The provider seam: what a grader asks a model (:class:`ChatRequest`), what it gets back
(:class:`ChatResult`), and what every provider adapter implements (:class:`ChatProvider`).

The request is provider-neutral: chat messages in OpenAI's shape (``system``/``user`` roles,
``text`` and ``image_url`` parts with base64 data URLs), the lingua franca that vLLM, Ray's
LLM serving and LiteLLM speak too. Each adapter translates it into its provider's own request
(Anthropic's content blocks, Gemini's parts, ...) and translates back:

- the answer, usage and refusal into :class:`ChatResult`;
- its provider's errors into raygrade's one tree (:mod:`raygrade.errors`), at one boundary
  inside the adapter;
- its provider's rate-limit headers into :attr:`ChatResult.headers`, named as OpenAI names
  them (``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``), which the shared limiter
  learns from (LiteLLM normalises other providers' headers the same way).

Adapters make one call per :meth:`ChatProvider.chat` (no retries: :mod:`raygrade.retry` decides
them, one try per rate-limiter reservation). :mod:`raygrade.providers.registry` builds the
adapter for a :class:`~raygrade.config.ProviderConfig`'s ``kind``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from raygrade.protocol import Usage


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    """One grading request, before any provider's shape.

    Attributes:
        messages: Chat messages in OpenAI's shape (text and ``image_url`` parts).
        max_tokens: Completion budget, tokens.
        temperature: Sampling temperature.
        json_schema: The output's JSON schema (structured output where the provider has it).
        schema_name: The schema's name, where the provider's request names it.
        model: Overrides the configured model.
        cache_key: The same for every request that shares this one's prefix (the system message:
            instructions and questions); OpenAI's ``prompt_cache_key`` routes such requests to
            the same prompt cache.
    """

    messages: list[dict[str, Any]]
    max_tokens: int
    temperature: float
    json_schema: dict[str, Any] | None = None
    schema_name: str = "grades"
    model: str | None = None
    cache_key: str | None = None


@dataclasses.dataclass
class ChatResult:
    """One model answer, reduced to what grading needs.

    Attributes:
        content: The message text (``None`` when the model refused).
        finish_reason: ``stop``, ``length``, ... (OpenAI's names; adapters map theirs).
        usage: Reported token usage, or ``None`` if the provider sent none.
        model: The model that answered.
        headers: Response headers, lower-cased; rate-limit headers under OpenAI's names.
        refusal: The refusal text when the model refused.
        token_logprobs: ``(token, logprob)`` per completion token, when requested and returned.
        sent_at: ``time.monotonic()`` when the request left (the HTTP client's request hook),
            or ``None`` when the transport does not say.
        cached_tokens: The part of ``usage.prompt_tokens`` read from the provider's prompt cache.
    """

    content: str | None
    finish_reason: str | None
    usage: Usage | None
    model: str
    headers: dict[str, str]
    refusal: str | None = None
    token_logprobs: list[tuple[str, float]] | None = None
    sent_at: float | None = None
    cached_tokens: int = 0


def split_system(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """``(the system messages' text, the other messages)``: for APIs that take the system prompt
    apart from the turns (Anthropic's ``system``, Gemini's ``system_instruction``)."""
    texts = []
    for m in messages:
        if m["role"] == "system":
            c = m["content"]
            texts.append(c if isinstance(c, str) else
                         "\n".join(p.get("text", "") for p in c if p.get("type") == "text"))
    return "\n\n".join(texts), [m for m in messages if m["role"] != "system"]


def data_url(url: str) -> tuple[str, str] | None:
    """``(media type, base64 data)`` of a ``data:<media type>;base64,<data>`` URL, else ``None``."""
    if url.startswith("data:") and ";base64," in url:
        media_type, data = url[5:].split(";base64,", 1)
        return media_type, data
    return None


class ChatProvider(Protocol):
    """A model behind one API: one call per :meth:`chat`, errors in raygrade's tree."""

    async def chat(self, request: ChatRequest) -> ChatResult:
        """Answer ``request`` once.

        Raises:
            RateLimitedError: the provider refused for its limits (429).
            ProviderStatusError: any other error status.
            ProviderTimeoutError, ProviderConnectionError: no answer.
            OutputParseError: an answer not in the provider's own shape.
        """
        ...

    async def close(self) -> None:
        """Release the adapter's connections."""
        ...
