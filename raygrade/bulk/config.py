"""The arguments of a bulk regrade."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from raygrade.config import BatcherConfig, ProviderConfig, default_provider
from raygrade.protocol import ReadingMode


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
        review_share: Share of graded items flagged ``needs_review`` (least confident first).
        retry_errors: On resume, regrade submissions whose earlier rows carry an error.
        compare: Earlier results (a ``results`` folder) to report changes against.
        model_deployment: ``(application, deployment)`` of the provider's model when it is served
            in a Serve application (a self-hosted model or the embedded default): the actors
            grade through that deployment's handle, on whichever node its replicas run.
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
    retry_errors: bool = True
    compare: str | None = None
    model_deployment: tuple[str, str] | None = None

    def batcher_config(self) -> BatcherConfig:
        """The batcher budgets in force (the Serve app's presets when unset)."""
        from raygrade.config import default_batcher

        return self.batcher if self.batcher is not None else default_batcher(self.provider)
