"""Provider configuration: one OpenAI-compatible endpoint and model, and its rate limits."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from raygrade.errors import ConfigError


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


ImageTokenRule = Literal["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "qwen2-vl", "idefics3",
                         "claude", "gemini",
                         "none"]


class RateLimitConfig(_Config):
    """A provider's limits for one model, and how the shared limiter treats them.

    Enforced by :class:`raygrade.ratelimit.limiter.RateLimiter` (one actor for the
    whole cluster), which takes this model as its policy; where callers of one key configure
    it differently, the limiter keeps the stricter of each field (:meth:`stricter`).

    Attributes:
        rpm: Requests per minute (``None``: unlimited unless response headers give one).
        tpm: Tokens per minute, charged as prompt + ``max_tokens`` up front (OpenAI's rule),
            settled with the reported ``usage`` afterwards.
        itpm: Input tokens per minute (Anthropic's rule): the prompt only, settled to the reported
            input less cache reads (which do not count toward it).
        otpm: Output tokens per minute (Anthropic's rule): ``max_tokens`` up front, settled to the
            reported output tokens.
        rpd: Requests per day, counted per calendar day and reset at midnight Pacific time
            (Gemini's rule, :mod:`raygrade.ratelimit.daily`). Once the day's requests are spent, a
            call waits for the reset if its caller's patience (``rate_limit_patience_s``) reaches
            it, else it is refused at once with ``quota_exhausted`` naming the reset time. A
            provider's own per-day refusal spends the day the same way, configured or not.
        window_s: The provider's window, seconds (60 for OpenAI; Azure OpenAI checks 1- or
            10-s windows pro rata); the limiter allows ``rpm·window_s/60`` per window.
        window_margin_s: Seconds added to the window for the delay between a
            reservation and the provider counting the call.
        refund_unused: Refund unused ``max_tokens`` on settlement (turn off for a
            provider that keeps charging the estimate).
        learn_from_headers: Lower limits / charge unseen usage from ``x-ratelimit-*`` headers.
        default_backoff_s: Global pause after a 429 that carries no ``Retry-After``.
        breaker_failure_threshold: Consecutive provider failures that open the circuit breaker.
        breaker_cooldown_s: Seconds the breaker stays open before a probe (doubles per failed probe).
        breaker_max_cooldown_s: Cap on that cooldown.
        rejected_requests_count: Whether the provider counts a rejected (429) call against its
            limits. OpenAI documents that it does; many OpenAI-compatible servers do not, and
            then the limiter refunds the rejected call's charge at once instead of keeping it
            for a whole window.
        max_concurrent_requests: Calls in flight at once (admitted, not yet settled): a self-hosted
            model's budget, whose capacity is concurrent sequences, not a per-minute count.
        max_concurrent_tokens: Prompt + ``max_tokens`` in flight at once (the KV-cache budget);
            one larger call still goes when nothing else is in flight.
        in_flight_timeout_s: After this long an unsettled call stops counting (its caller died).
        burst_s: Smooth admission: at most this many seconds' worth of each window's steady rate
            (``limit / window``) is admitted at once, then the steady rate
            (:class:`raygrade.ratelimit.pacer.Pacer`), so a provider that enforces its per-minute
            limit over shorter periods (OpenAI may enforce 60,000 RPM as 1,000 per second) sees
            no bursts; halved, down to 0.1 s, when the provider rejects calls while the window
            has room. ``None``: off (a whole window's worth may go at once).
    """

    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    itpm: int | None = Field(default=None, gt=0)
    otpm: int | None = Field(default=None, gt=0)
    rpd: int | None = Field(default=None, gt=0)
    window_s: float = Field(default=60.0, gt=0, le=3600)
    window_margin_s: float = Field(default=1.0, ge=0, le=60)
    refund_unused: bool = True
    learn_from_headers: bool = True
    default_backoff_s: float = Field(default=1.0, gt=0, le=300)
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_cooldown_s: float = Field(default=30.0, gt=0)
    breaker_max_cooldown_s: float = Field(default=300.0, gt=0)
    rejected_requests_count: bool = True
    max_concurrent_requests: int | None = Field(default=None, gt=0)
    max_concurrent_tokens: int | None = Field(default=None, gt=0)
    in_flight_timeout_s: float = Field(default=900.0, gt=0)
    burst_s: float | None = Field(default=6.0, gt=0, le=3600)

    def stricter(self, other: RateLimitConfig) -> RateLimitConfig:
        """The stricter of two callers' limits for the same key, field by field.

        Two callers of one provider and model (replicas of different deployments, a bulk job)
        may be configured differently; the shared limiter then keeps, for each field, the value
        that admits less (:data:`STRICTER`): the lower of two limits (a limit beats none), the
        shorter window (the same rate in smaller bursts), the longer margin, pause and cooldown,
        counting rejected calls, learning from headers, keeping unused ``max_tokens`` charged.

        Returns:
            A new config (``self`` when ``other`` is equal).
        """
        if other == self:
            return self
        return RateLimitConfig(**{name: rule(getattr(self, name), getattr(other, name))
                                  for name, rule in STRICTER.items()})


def _lower_limit(a: int | None, b: int | None) -> int | None:
    """The lower of two limits, where ``None`` (no limit) is the loosest."""
    return b if a is None else a if b is None else min(a, b)


#: For each field of :class:`RateLimitConfig`: which of two values admits less.
STRICTER: dict[str, Any] = {
    "rpm": _lower_limit,
    "tpm": _lower_limit,
    "itpm": _lower_limit,
    "otpm": _lower_limit,
    "rpd": _lower_limit,
    "window_s": min,
    "window_margin_s": max,
    "refund_unused": lambda a, b: a and b,
    "learn_from_headers": lambda a, b: a or b,
    "default_backoff_s": max,
    "breaker_failure_threshold": min,
    "breaker_cooldown_s": max,
    "breaker_max_cooldown_s": max,
    "rejected_requests_count": lambda a, b: a or b,
    "max_concurrent_requests": _lower_limit,
    "max_concurrent_tokens": _lower_limit,
    "in_flight_timeout_s": max,
    "burst_s": lambda a, b: b if a is None else a if b is None else min(a, b),  # a smaller burst; off is loosest
}


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
