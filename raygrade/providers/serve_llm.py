"""Chat completions from a model deployed in the raygrade application (``ray.serve.llm``).

:class:`ServeLLMProvider` sends the same OpenAI-shaped request as
:class:`~raygrade.providers.openai_compat.OpenAICompatibleProvider`
(:func:`~raygrade.providers.openai_compat.chat_request`) to an ``LLMServer`` deployment
through its Serve handle, so Serve routes it to a replica on whichever node holds one; the
answer is reduced by the same :func:`~raygrade.providers.openai_compat.chat_result`. This is
the one place where the engine's errors and Ray's become raygrade's.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from raygrade.config import ProviderConfig
from raygrade.errors import ProviderConnectionError, ProviderStatusError, ProviderTimeoutError, RateLimitedError
from raygrade.providers.base import ChatRequest, ChatResult
from raygrade.providers.openai_compat import chat_request, chat_result


class ServeLLMProvider:
    """One self-hosted model behind a Serve deployment handle.

    Args:
        config: The provider config (``kind: serve_llm``; ``model`` is the deployment's model id).
        handle: The ``LLMServer`` deployment's handle (``ray.serve.handle.DeploymentHandle``).
    """

    def __init__(self, config: ProviderConfig, handle: Any):
        self.config = config
        self._handle = handle.options(stream=True)  # LLMServer.chat is a generator, even for one answer

    async def chat(self, request: ChatRequest) -> ChatResult:
        """One chat completion (no retries here; :mod:`raygrade.retry` retries).

        Raises:
            ProviderStatusError: the engine answered with an error (its HTTP-style code);
                ``RateLimitedError`` for 429.
            ProviderTimeoutError: no answer within ``config.timeout_s``.
            ProviderConnectionError: the replica died or Serve could not route the call.
        """
        from ray.serve.llm.openai_api_models import ChatCompletionRequest, ErrorResponse

        body = chat_request(self.config, request)
        body.update(self.config.extra_body)  # vLLM's own sampling parameters, as on its HTTP server
        sent_at = time.monotonic()
        try:
            answer = await asyncio.wait_for(self._first(ChatCompletionRequest(**body)), timeout=self.config.timeout_s)
        except TimeoutError:
            raise ProviderTimeoutError("self-hosted model did not answer in time") from None
        except (ProviderStatusError, ProviderTimeoutError):
            raise
        except Exception as exc:  # RayActorError, BackPressureError, …: the replica, not the request
            raise ProviderConnectionError(f"self-hosted model call failed: {type(exc).__name__}") from exc
        if isinstance(answer, list):  # a batched stream chunk list: not asked for, but unwrap one element
            answer = answer[0] if answer else None
        if isinstance(answer, ErrorResponse):
            err = answer.error
            status = int(err.code) if isinstance(err.code, int) or str(err.code).isdigit() else 500
            cls = RateLimitedError if status == 429 else ProviderStatusError
            raise cls(f"self-hosted model answered {status} ({err.type or 'error'})", provider_status=status,
                      code=str(err.code) if err.code is not None else None)
        if answer is None:
            raise ProviderStatusError("self-hosted model returned nothing", provider_status=502)
        return chat_result(answer, {}, body["model"], sent_at)

    async def _first(self, request: Any) -> Any:
        async for item in self._handle.chat.remote(request):
            return item
        return None

    async def close(self) -> None:
        """Nothing to release: the handle belongs to Serve."""
