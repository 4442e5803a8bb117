"""Grader factories: the right grader for a provider configuration.

Above both graders (:class:`raygrade.grading.BatchGrader` over a provider's adapter,
:class:`raygrade.baseline.similarity.ReferenceSimilarityGrader`), so neither
imports the other; Serve's ``Grader`` deployment, bulk regrades and benchmarks build
graders here.
"""

from __future__ import annotations

from typing import Any

from raygrade.errors import ConfigError
from raygrade.grading import BatchGrader, Limiter
from raygrade.providers.base import ChatProvider
from raygrade.ratelimit.limiter import Priority


def cluster_grader(provider_config, namespace: str | None, *, priority: Priority = "interactive",
                   max_parse_retries: int = 2, model_handle: Any = None):
    """:func:`build_batch_grader` with the cluster's shared rate-limiter actor of ``namespace``
    as limiter, reserving at ``priority`` (``"interactive"`` for Serve, ``"bulk"`` for regrades);
    the baseline needs no limiter. Needs a running Ray."""
    limiter = None
    if provider_config.traits.calls_model:
        from raygrade.ratelimit.actor import ActorLimiter

        limiter = ActorLimiter(provider_config, namespace, priority=priority)
    return build_batch_grader(provider_config, limiter, max_parse_retries=max_parse_retries,
                              model_handle=model_handle)


def build_batch_grader(provider_config, limiter: Limiter | None, *, max_parse_retries: int = 2,
                       model_handle: Any = None, chat_provider: ChatProvider | None = None):
    """The grader for a provider config: :class:`BatchGrader` over its kind's adapter
    (:func:`raygrade.providers.registry.build_chat_provider`), or the zero-cost reference-similarity
    baseline for a kind that calls no model (no provider, no limiter). Both have
    ``async grade(GradeBatch) -> BatchOutcome``.

    Args:
        provider_config: A :class:`raygrade.config.ProviderConfig`.
        limiter: The shared limiter (``ActorLimiter``); unused by the baseline.
        max_parse_retries: Re-asks for schema-invalid items.
        model_handle: For a model served in the application (``provider_config.served_in_app``):
            its ``LLMServer`` deployment handle (:class:`raygrade.providers.serve_llm.ServeLLMProvider`).
        chat_provider: Answers in place of the endpoint (the Batch API's output replayed).

    Raises:
        ConfigError: no ``limiter`` for a model provider; no ``model_handle`` for a
            model served in the application; a hosted provider whose API key variable is unset; an
            unreadable or invalid ``calibration_path``.
    """
    if not provider_config.traits.calls_model:
        from raygrade.baseline.similarity import ReferenceSimilarityGrader

        return ReferenceSimilarityGrader(model_name=provider_config.model)
    if chat_provider is None:
        from raygrade.providers.registry import build_chat_provider

        chat_provider = build_chat_provider(provider_config, model_handle)
    fallback = baseline = None
    if provider_config.fallback_to_baseline or provider_config.baseline_agreement:
        from raygrade.baseline.similarity import ReferenceSimilarityGrader

        baseline = ReferenceSimilarityGrader()
        fallback = baseline if provider_config.fallback_to_baseline else None
    calibration = None
    if provider_config.calibration_path:
        from raygrade.calibration import ConfidenceCalibration

        calibration = ConfidenceCalibration.load(provider_config.calibration_path)
    if limiter is None:
        raise ConfigError(f"provider {provider_config.name!r} calls an endpoint and needs a rate limiter")
    return BatchGrader(
        chat_provider, limiter, bucket_key=provider_config.bucket_key, max_retries=provider_config.max_retries,
        max_parse_retries=max_parse_retries, schema_bounds=provider_config.schema_bounds,
        feedback_max_chars=provider_config.feedback_max_chars,
        retry_after_cap_s=provider_config.retry_after_cap_s,
        rate_limit_patience_s=provider_config.rate_limit_patience_s,
        max_completion_tokens=provider_config.max_completion_tokens, fallback=fallback, calibration=calibration,
        agreement=baseline if provider_config.baseline_agreement else None)
