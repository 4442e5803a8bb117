"""The application's configuration: :class:`RaygradeArgs` (``build_app``'s ``args:``), the
batcher and store settings, and the provider presets."""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field, field_validator, model_validator

from raygrade.config.api import ApiConfig
from raygrade.config.provider import PROVIDER_KINDS, ProviderConfig, RateLimitConfig
from raygrade.config.rate_limit import _Config
from raygrade.selfhosted import LocalEngineConfig, ServedModelConfig


class BatcherConfig(_Config):
    """How the batcher packs students into requests.

    Attributes:
        max_images_per_request: Provider limit on images in one request.
        max_students_per_request: Upper bound on students packed together.
        completion_tokens_per_item: Completion budget per (student, question) item.
        max_concurrent_batches: Batches of one job in flight at once.
        max_parse_retries: Re-asks of a batch whose output failed the schema.
        share_wait_s: Longest a batch of a job with ``options.batch_across_jobs`` waits for
            other jobs' batches to share its request (:mod:`raygrade.coalesce`).
    """

    max_images_per_request: int = Field(default=16, gt=0)
    max_students_per_request: int = Field(default=8, gt=0)
    completion_tokens_per_item: int = Field(default=160, gt=0)
    max_concurrent_batches: int = Field(default=16, gt=0)
    max_parse_retries: int = Field(default=2, ge=0)
    share_wait_s: float = Field(default=0.05, ge=0, le=10)


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
        batch_lease_s: Seconds a batcher owns a dispatched batch without renewing it (it
            renews every ``poll_interval_s`` while the batch is graded, however long the call);
            a batch whose owner died is re-dispatched after this. 15 s, as Kubernetes' leader
            leases: a Batcher killed mid-job stalled its batches 52 s with 60, 8 s with 15.
        max_batch_attempts: Grader calls of one batch lost to a replica death before its
            items fail with ``grader_error`` (a batch taken over from a batcher that died is
            not counted).
        poll_interval_s: How often the batcher looks for unfinished jobs, expired
            leases and due webhooks.
        webhook_secret_env: Environment variable with the HMAC key for webhook signatures
            (Standard Webhooks); jobs with a ``webhook_url`` are refused while it is unset.
        webhook_max_attempts: Deliveries tried before a webhook is given up.
        webhook_timeout_s: Timeout of one delivery.
        webhook_allowed_networks: CIDRs webhooks may reach although they are not public (e.g.
            ``10.0.0.0/8`` for receivers inside the cluster's network); by default webhooks go
            only to public addresses (checked at submission and at every delivery).
        blob_uri: Where accepted page images are stored, once each, by SHA-256
            (:mod:`raygrade.blobs`): a folder, or a URI pyarrow opens (``s3://bucket/raygrade``,
            ``gs://…``). Default: ``blobs/`` beside the SQLite file, else ``$RAYGRADE_HOME/blobs``.
            A folder is on one node: the ``JobRegistry`` and ``Batcher`` replicas are then
            placed on the head node; with object storage they can run anywhere.
    """

    url: str = Field(default_factory=default_store_url)
    url_env: str | None = "RAYGRADE_STORE_URL"
    blob_uri: str | None = None
    batch_lease_s: float = Field(default=15.0, gt=0)
    max_batch_attempts: int = Field(default=3, ge=1)
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    webhook_secret_env: str = "RAYGRADE_WEBHOOK_SECRET"
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_allowed_networks: list[str] = Field(default_factory=list)

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _check_networks(cls, v: list[str]) -> list[str]:
        import ipaddress

        for n in v:
            ipaddress.ip_network(n, strict=False)  # ValueError: not a CIDR
        return v

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
        local_engine: Settings of the embedded default model; used only when ``provider`` is
            ``kind: local_vllm`` without a ``base_url`` (otherwise ignored, so an
            environment override of the provider needs no edit here).
        batcher: How students are packed into requests.
        store: The durable job store.
        api: The HTTP API's authentication and request bounds (:class:`ApiConfig`).
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
    api: ApiConfig = Field(default_factory=ApiConfig)
    namespace: str = "raygrade"
    models: list[ServedModelConfig] = Field(default_factory=list)
    deployment_options: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @property
    def embedded_engine(self) -> LocalEngineConfig | None:
        """The embedded model to deploy: ``local_engine`` when the provider is the embedded default, else ``None``."""
        if self.provider.embedded:
            return self.local_engine
        return None

    def served_models(self) -> list[ServedModelConfig]:
        """Every model the application deploys: ``models`` plus the embedded default when it is used."""
        from raygrade.engine.local_vllm import embedded_model

        engine = self.embedded_engine
        return self.models + ([embedded_model(engine)] if engine is not None else [])

    @model_validator(mode="after")
    def _check(self) -> RaygradeArgs:
        p = self.provider
        if p.embedded:
            self.local_engine = self.local_engine or LocalEngineConfig(served_model_name=p.model)
            if p.model != self.local_engine.served_model_name:
                raise ValueError(f"the embedded provider asks for model {p.model!r} but local_engine serves "
                                 f"{self.local_engine.served_model_name!r}")
            if p.tokenizer == "hf" and p.tokenizer_path is None:  # the model's own tokenizer, where its folder is
                from raygrade.engine.local_vllm import model_dir

                self.provider = p.model_copy(update={"tokenizer_path": str(model_dir(self.local_engine))})
        if "batcher" not in self.model_fields_set:
            self.batcher = default_batcher(p)
        served = self.served_models()
        ids = [m.model_id for m in served]
        if len(ids) != len(set(ids)):
            raise ValueError("models: model_id values must be unique (and differ from the embedded model's)")
        if p.served_in_app and p.model not in ids:
            raise ValueError(f"provider kind {p.kind!r} names model {p.model!r}, which is not among "
                             f"models ({ids or 'none configured'})")
        rl = self.provider.rate_limit
        if self.provider.served_in_app and rl.max_concurrent_requests is None and rl.rpm is rl.tpm is None:
            # A self-hosted model's budget is its capacity: the calls all its replicas take at once.
            # Every caller (graders, bulk regrades) reserves in it, interactive first.
            model = next(m for m in served if m.model_id == self.provider.model)
            cap = model.max_replicas * model.target_ongoing_requests
            self.provider = self.provider.model_copy(
                update={"rate_limit": rl.model_copy(update={"max_concurrent_requests": cap})})
        return self


def local_vllm_provider(engine: LocalEngineConfig | None = None) -> ProviderConfig:
    """The provider settings for the embedded default model (text-only: pages are OCR'd; feedback of one
    short sentence, ``feedback_max_chars=80``, for CPU decoding)."""
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
        # One short sentence: at ≈ 6 tokens/s a stream, the default 200 characters (which SmolLM2 fills
        # with repeats, ≈ 240 tokens) are 40 s an item; 80 characters are under half of that.
        feedback_max_chars=80,
        score_logprobs=True,
        timeout_s=900.0,  # CPU decoding is slow (≈ 7 tokens/s per stream on 2 cores)
    )


def local_vllm_batcher() -> BatcherConfig:
    """Batcher budgets for the embedded CPU engine (its kind's ``batcher_defaults``, see
    :data:`~raygrade.config.provider.PROVIDER_KINDS`)."""
    return BatcherConfig(**PROVIDER_KINDS["local_vllm"].batcher_defaults)


def default_batcher(provider: ProviderConfig) -> BatcherConfig:
    """The batcher preset for ``provider`` when none is given: its kind's ``batcher_defaults``
    (small requests for the embedded CPU model, 64 students a request for the baseline), else defaults."""
    return BatcherConfig(**provider.traits.batcher_defaults)


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
