"""The arguments of a bulk regrade."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from raygrade.config import BatcherConfig, LocalEngineConfig, ProviderConfig, ServedModelConfig, default_provider
from raygrade.protocol import ReadingMode


class BatchApiConfig(BaseModel):
    """How ``mode: batch-api`` uses the provider's batch API (OpenAI's Batch API,
    https://platform.openai.com/docs/guides/batch; Anthropic's Message Batches; Gemini's batch
    mode: :mod:`raygrade.providers.batches`).

    Attributes:
        max_requests_per_file: Requests per input file, i.e. per batch (OpenAI allows 50,000;
            Anthropic 100,000).
        max_file_bytes: Bytes of request lines per batch (OpenAI allows 200 MB; Anthropic 256 MB;
            Gemini's inline requests 20 MB, so its parts are cut at 18 MB whatever this says).
        max_enqueued_tokens: The model's enqueued-token limit (prompt tokens of batches not yet
            finished, by raygrade's estimate); the next file is submitted when earlier ones
            finish. ``None``: submit every file at once.
        poll_interval_s: Seconds between status polls.
        max_rounds: Submissions of requests that failed, expired, were cancelled or came back
            invalid (the first included); what is still ungraded after them ends as error rows.
        fallback: ``batch`` (retries go in a follow-up batch) or ``sync`` (through the regular
            API and the cluster's rate limiter).
        price_factor: The Batch API's price relative to the synchronous API (0.5: half price).
    """

    model_config = ConfigDict(extra="forbid")

    max_requests_per_file: int = Field(default=50_000, ge=1, le=50_000)
    max_file_bytes: int = Field(default=200 * 1000 * 1000, ge=1024, le=200 * 1000 * 1000)
    max_enqueued_tokens: int | None = Field(default=None, ge=1)
    poll_interval_s: float = Field(default=30.0, gt=0)
    max_rounds: int = Field(default=3, ge=1)
    fallback: Literal["batch", "sync"] = "batch"
    price_factor: float = Field(default=0.5, gt=0, le=1)


class RegradeConfig(BaseModel):
    """Arguments of :func:`raygrade.bulk.run_regrade` (``jobs/regrade.py`` flags map onto these).

    Attributes:
        input: Dataset folder (local path or any URI pyarrow's filesystems open).
        output: Output folder (local path).
        provider: Who grades (default: the app's default provider).
        batcher: Packing budgets (default: the provider's preset, as in the Serve app).
        namespace: Ray namespace of the shared rate-limiter actor (the Serve app's).
        reading_mode: ``auto`` (vision if the provider supports it, else OCR), ``vision`` or ``ocr``.
        actors: Grading actors in the pool.
        submissions_per_block: Submissions planned and graded together by one actor call.
        batches_in_flight: Concurrent provider calls per actor.
        review_share: Share of graded items flagged ``needs_review`` (those most at risk first).
        review_by: What the share ranks by: ``expected_error`` (as a share of the maximum) or
            ``confidence`` (:func:`raygrade.review.risk`).
        retry_errors: On resume, regrade submissions whose earlier rows carry an error.
        compare: Earlier results (a ``results`` folder) to report changes against.
        model_deployment: ``(application, deployment)`` of the provider's model when it is served
            in a Serve application (a self-hosted model or the embedded default): the actors
            grade through that deployment's handle, on whichever node its replicas run.
        mode: ``sync`` (requests through the rate limiter, now), ``batch-api`` (the provider's
            batch API: within 24 h at half the price, resumable; :mod:`raygrade.bulk.batch_api`) or
            ``vllm-batch`` (the same files through vLLM's offline batch runner on the cluster's
            model nodes; :mod:`raygrade.bulk.vllm_batch`).
        batch_api: Settings of the two batch modes.
        vllm_model: ``vllm-batch``: the self-hosted model to run (the provider's served model).
        vllm_engine: ``vllm-batch`` with the embedded model: its settings (the model folder is
            prepared on the node that runs it).
    """

    model_config = ConfigDict(extra="forbid")

    input: str
    output: str
    provider: ProviderConfig = Field(default_factory=default_provider)
    batcher: BatcherConfig | None = None
    namespace: str = "raygrade"
    reading_mode: ReadingMode = ReadingMode.AUTO
    actors: int = Field(default=2, ge=1)
    submissions_per_block: int = Field(default=32, ge=1)
    batches_in_flight: int = Field(default=8, ge=1)
    review_share: float = Field(default=0.0, ge=0, le=1)
    review_by: Literal["expected_error", "confidence"] = "expected_error"
    retry_errors: bool = True
    compare: str | None = None
    model_deployment: tuple[str, str] | None = None
    mode: Literal["sync", "batch-api", "vllm-batch"] = "sync"
    batch_api: BatchApiConfig = Field(default_factory=BatchApiConfig)
    vllm_model: ServedModelConfig | None = None
    vllm_engine: LocalEngineConfig | None = None

    @model_validator(mode="after")
    def _check_mode(self) -> RegradeConfig:
        if self.mode not in self.provider.traits.bulk_modes:
            raise ValueError(f"provider kind {self.provider.kind!r} regrades in mode "
                             f"{' or '.join(sorted(self.provider.traits.bulk_modes))}, not {self.mode!r}")
        return self

    def batcher_config(self) -> BatcherConfig:
        """The batcher budgets in force (the Serve app's presets when unset)."""
        from raygrade.config import default_batcher

        return self.batcher if self.batcher is not None else default_batcher(self.provider)
