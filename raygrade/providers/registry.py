"""The provider registry: from a :class:`~raygrade.config.ProviderConfig`'s ``kind`` to the adapter
that calls its model (:class:`~raygrade.providers.base.ChatProvider`) and its start-up check.

This is the one place that picks code by ``kind`` (configuration-level traits, such as whether a
kind is hosted or served in the application, are :data:`raygrade.config.provider.PROVIDER_KINDS`).
A new provider is one adapter module and one entry here. Adapters are imported when first built,
so a kind's SDK is needed only where that kind is used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from raygrade.config import ProviderConfig
from raygrade.errors import ConfigError
from raygrade.providers.base import ChatProvider


def _openai_compatible(config: ProviderConfig, model_handle: Any) -> ChatProvider:
    from raygrade.providers.openai_compat import OpenAICompatibleProvider

    return OpenAICompatibleProvider(config)


def _anthropic(config: ProviderConfig, model_handle: Any) -> ChatProvider:
    from raygrade.providers.anthropic_messages import AnthropicProvider

    return AnthropicProvider(config)


def _gemini(config: ProviderConfig, model_handle: Any) -> ChatProvider:
    from raygrade.providers.gemini import GeminiProvider

    return GeminiProvider(config)


def _serve_llm(config: ProviderConfig, model_handle: Any) -> ChatProvider:
    if model_handle is None:
        raise ConfigError(f"provider {config.name!r} ({config.kind}) needs the deployment handle of model "
                          f"{config.model!r}", param="model")
    from raygrade.providers.serve_llm import ServeLLMProvider

    return ServeLLMProvider(config, model_handle)


def _local_vllm(config: ProviderConfig, model_handle: Any) -> ChatProvider:
    """The embedded model through its deployment, or a vLLM server at ``base_url``."""
    return (_serve_llm if config.served_in_app else _openai_compatible)(config, model_handle)


def _openai_batches(config: ProviderConfig, client: Any) -> Any:
    from raygrade.providers.batches import OpenAIBatches

    return OpenAIBatches(config, client)


def _anthropic_batches(config: ProviderConfig, client: Any) -> Any:
    from raygrade.providers.anthropic_batches import AnthropicBatches

    return AnthropicBatches(config, client)


def _gemini_batches(config: ProviderConfig, client: Any) -> Any:
    from raygrade.providers.gemini_batches import GeminiBatches

    return GeminiBatches(config, client)


def _check_key(config: ProviderConfig) -> None:
    config.api_key()  # the key's variable is set (raises ConfigError naming it)


def _check_openai_compatible(config: ProviderConfig) -> None:
    from raygrade.providers.openai_compat import check_provider

    check_provider(config)


@dataclasses.dataclass(frozen=True)
class ProviderAdapter:
    """How one provider kind's model is called.

    Attributes:
        build: ``(config, model_handle) -> ChatProvider``; ``model_handle`` is the model's
            Serve deployment handle for a model served in the application, else ``None``.
        check: The start-up check of a replica or bulk job (key, endpoint, model), raising
            :class:`~raygrade.errors.ConfigError`; ``None`` where the kind has none.
        batches: ``(config, client) -> BatchBackend`` (:mod:`raygrade.providers.batches`):
            the kind's batch API for ``mode: batch-api`` (and vLLM's batch runner, which takes
            OpenAI's shape); ``None`` where the kind has none.
    """

    build: Callable[[ProviderConfig, Any], ChatProvider]
    check: Callable[[ProviderConfig], None] | None = None
    batches: Callable[[ProviderConfig, Any], Any] | None = None


#: The adapter of every kind that calls a model (``PROVIDER_KINDS[kind].calls_model``).
ADAPTERS: dict[str, ProviderAdapter] = {
    "openai_compatible": ProviderAdapter(_openai_compatible, check=_check_openai_compatible, batches=_openai_batches),
    "anthropic": ProviderAdapter(_anthropic, check=_check_key, batches=_anthropic_batches),
    "gemini": ProviderAdapter(_gemini, check=_check_key, batches=_gemini_batches),
    "local_vllm": ProviderAdapter(_local_vllm, batches=_openai_batches),  # vllm-batch: OpenAI's shape
    "serve_llm": ProviderAdapter(_serve_llm, batches=_openai_batches),
}


def _adapter(config: ProviderConfig) -> ProviderAdapter:
    try:
        return ADAPTERS[config.kind]
    except KeyError:
        raise ConfigError(f"provider {config.name!r}: kind {config.kind!r} calls no model", param="kind") from None


def build_chat_provider(config: ProviderConfig, model_handle: Any = None) -> ChatProvider:
    """The adapter for ``config``'s kind.

    Args:
        config: The provider's config.
        model_handle: The model's ``LLMServer`` deployment handle, for a model served in the
            application (``config.served_in_app``).

    Raises:
        ConfigError: a kind without a model (the baseline); a model served in the application
            without its handle; a hosted provider whose API key variable is unset.
    """
    return _adapter(config).build(config, model_handle)


def check_on_start(config: ProviderConfig) -> None:
    """Run the kind's start-up check when it has one and ``config.check_on_start`` is set, so a
    missing key, an unreachable endpoint or an unknown model fails a replica or a bulk job at
    start (with its message in ``serve status``) instead of failing every job.

    Raises:
        ConfigError: what the check found.
    """
    if config.check_on_start and config.traits.calls_model and (check := _adapter(config).check) is not None:
        check(config)


def build_batch_backend(config: ProviderConfig, client: Any = None) -> Any:
    """The batch API of ``config``'s kind (a :class:`raygrade.providers.batches.BatchBackend`).

    Args:
        config: The provider's config.
        client: The provider's client (``openai.OpenAI``, ``anthropic.Anthropic``, or vLLM's
            batch runner); ``None``: one built from ``config``.

    Raises:
        ConfigError: the kind has no batch API.
    """
    if (make := _adapter(config).batches) is None:
        raise ConfigError(f"provider {config.name!r}: kind {config.kind!r} has no batch API", param="kind")
    return make(config, client)
