"""Provider configuration: one OpenAI-compatible endpoint and model, and its rate limits."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator

from raygrade.config.rate_limit import RateLimitConfig, _Config
from raygrade.errors import ConfigError

__all__ = ["ImageTokenRule", "ProviderConfig", "ProviderKind", "PROVIDER_KINDS", "RateLimitConfig"]


ImageTokenRule = Literal["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "qwen2-vl", "idefics3",
                         "claude", "gemini",
                         "none"]


ProviderKind = Literal["openai_compatible", "anthropic", "gemini", "local_vllm", "serve_llm", "reference_similarity"]


@dataclasses.dataclass(frozen=True)
class ProviderKindTraits:
    """What configuration needs to know about a provider ``kind`` (its adapter, the code that
    calls the model, is :mod:`raygrade.providers.registry`'s).

    Attributes:
        calls_model: ``False`` for a grader without a model (the reference-similarity
            baseline): no provider adapter, no rate limiter, no tokens.
        hosted: A remote API called with an API key: the key's variable must be set (unless
            ``api_key_env`` is null for a keyless server at ``base_url``).
        in_app: Where the model runs: ``"always"`` a deployment of the application (called by
            handle), ``"without_base_url"`` the embedded default model unless a ``base_url``
            points at a server, ``"never"`` behind a URL.
        api_key_env: The key's environment variable when the config names none.
        structured_outputs: The ``structured_output`` values the kind supports.
        bulk_modes: The bulk regrade modes (``RegradeConfig.mode``) the kind supports.
        own_tokenizer: ``tokenizer: hf`` needs no ``tokenizer_path``: raygrade prepares the
            model's folder (the embedded model's converted checkpoint) and finds it there.
        batcher_defaults: :class:`~raygrade.config.BatcherConfig` fields used when the
            application's args set no batcher (sizes that suit the kind's model).
    """

    calls_model: bool = True
    hosted: bool = False
    in_app: Literal["always", "without_base_url", "never"] = "never"
    api_key_env: str | None = None
    structured_outputs: frozenset[str] = frozenset({"json_schema", "none"})
    bulk_modes: frozenset[str] = frozenset({"sync", "batch-api", "vllm-batch"})
    own_tokenizer: bool = False
    batcher_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)


#: Every provider ``kind`` and its traits (:class:`ProviderKindTraits`). The embedded CPU engine
#: decodes ≈ 7 tokens/s per stream on 2 cores: many small requests finish sooner than a few large
#: ones, and 256 tokens per item covers the schema's 200-character feedback at one character per
#: token; the baseline has no model, so a request is only a unit of work.
PROVIDER_KINDS: dict[str, ProviderKindTraits] = {
    "openai_compatible": ProviderKindTraits(hosted=True),
    "anthropic": ProviderKindTraits(hosted=True, api_key_env="ANTHROPIC_API_KEY",
                                    structured_outputs=frozenset({"json_schema", "tool", "none"}),
                                    bulk_modes=frozenset({"sync", "batch-api"})),  # Message Batches
    "gemini": ProviderKindTraits(hosted=True, api_key_env="GEMINI_API_KEY",
                                 bulk_modes=frozenset({"sync", "batch-api"})),  # batch mode, inline requests
    "local_vllm": ProviderKindTraits(in_app="without_base_url", own_tokenizer=True, batcher_defaults={
        "max_students_per_request": 2, "completion_tokens_per_item": 256}),
    "serve_llm": ProviderKindTraits(in_app="always"),
    "reference_similarity": ProviderKindTraits(calls_model=False, batcher_defaults={"max_students_per_request": 64}),
}


class ProviderConfig(_Config):
    """One OpenAI-compatible endpoint and model: hosted (OpenAI, OpenRouter) or vLLM.

    The API key is read from the environment variable named by ``api_key_env``
    (never stored in config files, never logged). ``base_url=None`` with
    ``kind="local_vllm"`` means "the embedded default model" (served in the application by
    Ray's LLM serving library, like ``serve_llm``; with a ``base_url``, a vLLM server there);
    ``kind="serve_llm"`` means the self-hosted model of ``RaygradeArgs.models`` whose
    ``model_id`` is ``model``. Both are called through the model's Serve deployment handle
    (no URL, no key).
    """

    name: str = Field(default="default", description="A name for logs, metrics and results.")
    kind: ProviderKind = Field(default="openai_compatible", description=(
        "Which adapter: openai_compatible, anthropic, gemini, local_vllm (the embedded model, or a vLLM server at "
        "base_url), serve_llm (a model of RaygradeArgs.models) or reference_similarity (the baseline)."))
    base_url: str | None = Field(default=None, description=(
        "The API's base URL (e.g. http://vllm:8000/v1); None: the kind's own API (OpenAI's, Anthropic's, "
        "Google's) or, for local_vllm, the embedded model."))
    api_key_env: str | None = Field(default="OPENAI_API_KEY", description=(
        "Name of the environment variable holding the API key (the key itself is never in a config file); "
        "None for servers without keys. Defaults to the kind's own variable (ANTHROPIC_API_KEY, GEMINI_API_KEY)."))
    model: str = Field(default="gpt-4o-mini", description="The model name the API expects (or the model_id served).")
    supports_vision: bool = Field(default=True, description=(
        "Whether the model takes page images; if not, pages are read by OCR first."))
    image_token_rule: ImageTokenRule = Field(default="gpt-4o", description=(
        "How the planner counts an image's prompt tokens (the model family's rule: tiles, patches or pixels)."))
    image_detail: Literal["high", "low"] = Field(default="high", description=(
        "OpenAI's image detail: high (tiles) or low (85 tokens, 512 px)."))
    tokenizer: Literal["tiktoken", "hf"] = Field(default="tiktoken", description=(
        "How text tokens are counted for planning: tiktoken (OpenAI's encodings) or hf (a Hugging Face "
        "tokenizer at tokenizer_path)."))
    tokenizer_path: str | None = Field(default=None, description="HF tokenizer folder (tokenizer='hf').")
    context_window: int = Field(default=128_000, gt=0, description="Prompt + completion tokens.")
    max_completion_tokens: int = Field(default=16_384, gt=0, description="Most completion tokens one call may ask for.")
    structured_output: Literal["json_schema", "tool", "none"] = Field(default="json_schema", description=(
        "How the output is held to the grading schema: the provider's JSON-schema output, a forced tool call "
        "whose input is the schema (kinds whose traits list it: anthropic), or not at all."))
    schema_bounds: bool = Field(default=False, description=(
        "Put minimum/maximum/maxLength in the output schema (vLLM's xgrammar enforces them; "
        "OpenAI strict mode rejects some)."))
    feedback_max_chars: int = Field(default=200, ge=1, le=20_000, description=(
        "With schema_bounds: the feedback's maxLength in the output schema, which the engine's grammar enforces "
        "(prompts.MAX_FEEDBACK_CHARS by default). Feedback is most of each grade's output tokens: a lower cap "
        "answers sooner and costs less, and stops a small model that repeats itself sooner."))
    score_logprobs: bool = Field(default=False, description=(
        "Request token log-probabilities and use P(score tokens | prompt, feedback) as each grade's confidence "
        "(vLLM and OpenAI chat models return them)."))
    fallback_to_baseline: bool = Field(default=False, description=(
        "While this provider's circuit breaker is open, grade with the reference-similarity baseline "
        "(results say model 'reference-similarity') instead of reporting circuit_open errors."))
    calibration_path: str | None = Field(default=None, description=(
        "JSON confidence map fitted on graded examples for this provider and model "
        "(raygrade.calibration; written by benchmarks/fidelity.py --calibrate)."))
    baseline_agreement: bool = Field(default=False, description=(
        "Also grade each batch with the reference-similarity baseline (text pages only, no tokens) and report "
        "baseline_agrees per grade; a calibration map fitted with agreement uses it."))
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig, description=(
        "The provider's limits for the shared token-bucket limiter (RPM/TPM, in flight; learned from headers "
        "and 429s where left out)."))
    check_on_start: bool = Field(default=True, description=(
        "Grader replicas check the key, the endpoint and the model when they start "
        "(raygrade.providers.openai_compat.check_provider), so a misconfiguration fails the deployment "
        "with its message in `serve status` instead of failing every job."))
    timeout_s: float = Field(default=120.0, gt=0, description="Seconds one call may take before it is retried.")
    max_retries: int = Field(default=3, ge=0, le=10, description="Retries of retryable errors per call.")
    retry_after_cap_s: float = Field(default=60.0, gt=0, description="Longest Retry-After honoured, seconds.")
    rate_limit_patience_s: float = Field(default=900.0, ge=0, description=(
        "Seconds a request keeps being retried after the provider's first 429 before its items fail with "
        "rate_limit_error; 429s do not spend max_retries (the shared limiter slows every caller of the key "
        "meanwhile). 0: a 429 is retried as any other error. Also the longest a request waits for a spent "
        "daily quota (rate_limit.rpd) to reset before its items fail with quota_exhausted."))
    extra_body: dict[str, Any] = Field(default_factory=dict, description="Sent as-is (e.g. vLLM params).")
    extra_headers: dict[str, str] = Field(default_factory=dict, description=(
        "HTTP headers sent with every request, e.g. OpenRouter's app attribution (HTTP-Referer, X-Title). "
        "Not for secrets: the key comes from api_key_env."))
    price_per_mtok_input_usd: float = Field(default=0.0, ge=0, description=(
        "USD per million prompt tokens, for cost reports and raygrade estimate."))
    price_per_mtok_output_usd: float = Field(default=0.0, ge=0, description="USD per million completion tokens.")
    price_per_mtok_cache_read_usd: float | None = Field(default=None, ge=0, description=(
        "USD per million prompt tokens read from the provider's prompt cache (OpenAI's cached input, Anthropic's "
        "cache read, Gemini's cached context); raygrade estimate then prices the shared prefix with the cache "
        "too. None: not priced."))
    price_per_mtok_cache_write_usd: float | None = Field(default=None, ge=0, description=(
        "USD per million prompt tokens written to the cache where writing costs more than input (Anthropic's "
        "5-minute cache: 1.25x input). None: as input."))
    prompt_cache_min_tokens: int = Field(default=1024, ge=0, description=(
        "The smallest prompt prefix the provider caches (OpenAI, Anthropic's Sonnet and Opus models, Gemini "
        "Flash: 1024 tokens; Claude Haiku: 2048; Gemini Pro: 4096): shorter prefixes are priced uncached."))
    prompt_cache_key: bool | None = Field(default=None, description=(
        "Send OpenAI's prompt_cache_key (one per assessment's shared prefix) so its requests reach the same "
        "prompt cache. None: only to OpenAI's own API (base_url unset or api.openai.com)."))

    @property
    def sends_prompt_cache_key(self) -> bool:
        """Whether requests carry ``prompt_cache_key`` (see the field)."""
        if self.prompt_cache_key is not None:
            return self.prompt_cache_key
        return self.kind == "openai_compatible" and (self.base_url is None or "api.openai.com" in self.base_url)

    @model_validator(mode="after")
    def _check(self) -> ProviderConfig:
        if "api_key_env" not in self.model_fields_set and self.traits.api_key_env:
            self.api_key_env = self.traits.api_key_env  # (validate_assignment is off: no recursion)
        if self.structured_output not in self.traits.structured_outputs:
            raise ValueError(f"structured_output {self.structured_output!r} is not one of kind {self.kind!r}'s "
                             f"({', '.join(sorted(self.traits.structured_outputs))})")
        if self.traits.hosted and self.base_url is None and self.api_key_env is None:
            raise ValueError("a hosted provider needs api_key_env")
        if self.tokenizer == "hf" and self.tokenizer_path is None and not self.traits.own_tokenizer:
            raise ValueError("tokenizer='hf' needs tokenizer_path")
        return self

    @property
    def traits(self) -> ProviderKindTraits:
        """What this provider's ``kind`` is (:data:`PROVIDER_KINDS`)."""
        return PROVIDER_KINDS[self.kind]

    @property
    def embedded(self) -> bool:
        """Whether this is the embedded default model (deployed by the application from ``local_engine``)."""
        return self.traits.in_app == "without_base_url" and self.base_url is None

    @property
    def served_in_app(self) -> bool:
        """Whether the model is a deployment of the application (called by handle, not URL)."""
        return self.traits.in_app == "always" or self.embedded

    @property
    def bucket_key(self) -> str:
        """Key of this provider's budget in the rate limiter: one per (provider, model)."""
        return f"{self.name}/{self.model}"

    def api_key(self) -> SecretStr:
        """The API key from the environment; a placeholder for keyless servers (``api_key_env: null``).

        Raises:
            ConfigError: an OpenAI-compatible provider names a key variable that is unset (a
                hosted ``base_url`` would otherwise be sent the key ``EMPTY``).
        """
        value = os.environ.get(self.api_key_env) if self.api_key_env else None
        if value:
            return SecretStr(value)
        if self.api_key_env and self.traits.hosted:
            raise ConfigError(f"environment variable {self.api_key_env} is not set (a keyless server: "
                              f"api_key_env: null)", param="api_key_env")
        return SecretStr("EMPTY")
