"""``Grader``: autoscaling replicas that grade batches through one provider.

Each replica builds its provider kind's adapter (:mod:`raygrade.providers.registry`: a hosted
API or a vLLM server by URL; a model deployed in the application, self-hosted or the embedded
default, over its ``ray.serve.llm`` deployment handle) and reserves every call in the
cluster-wide rate limiter actor; or, for a kind that calls no model, the zero-cost baseline
grader. A batch's stored page images are read here from the blob store the batcher names
(:class:`PagesFrom`), unless that store is a folder on another node (:class:`PagesElsewhere`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import NamedTuple

import ray
from ray import serve

from raygrade.baseline.similarity import ReferenceSimilarityGrader
from raygrade.batch import BatchOutcome, GradeBatch
from raygrade.blobs import BlobStore, has_stored_pages, inline_batch, is_local
from raygrade.config import BatcherConfig, ProviderConfig
from raygrade.errors import StorageError
from raygrade.graders import cluster_grader
from raygrade.grading import BatchGrader
from raygrade.metrics import Recorder
from raygrade.providers.registry import check_on_start
from raygrade.serve import HEALTH_CHECK_PERIOD_S
from raygrade.tracing import span

# A child of Serve's logger: lines go to the replica's log file in the app's logging_config
# format (JSON in serve_config.yaml), as Serve documents for deployment code.
logger = logging.getLogger(f"ray.serve.{__name__}")


class PagesFrom(NamedTuple):
    """Where a batch's stored page images are: the blob store's URI and the node the caller
    runs on (a folder is readable only there)."""

    blob_uri: str
    node_id: str


class PagesElsewhere(Exception):
    """Raised by :meth:`Grader.grade` before any work when this replica cannot read the batch's
    page images (a folder on another node, or a store it cannot open): the caller sends the
    batch again with its pages inlined."""


@serve.deployment(name="Grader", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=16,
                  autoscaling_config={"min_replicas": 2, "max_replicas": 4, "target_ongoing_requests": 4},
                  health_check_period_s=HEALTH_CHECK_PERIOD_S)
class Grader:
    """Grades one :class:`GradeBatch` per call.

    Args:
        provider: The provider config.
        batcher: Retry bounds for schema-invalid output.
        namespace: Ray namespace of the shared rate limiter.
        models: ``{model_id: LLMServer handle}`` of the application's self-hosted models
            (``ray.serve.llm``, the embedded default included); a provider served in the
            application grades through its model's handle.
    """

    def __init__(self, provider: ProviderConfig, batcher: BatcherConfig, namespace: str,
                 models: dict | None = None):
        # A missing key, an unreachable endpoint or an unknown model fails the replica here:
        # the deployment is unhealthy with this message in `serve status`, no job is taken.
        check_on_start(provider)
        self._config, self._batcher_config = provider, batcher
        self._namespace = namespace
        self._model_handle = (models or {}).get(provider.model) if provider.served_in_app else None
        self._grader: BatchGrader | ReferenceSimilarityGrader | None = None
        ctx = serve.get_replica_context()
        self.replica_id = ctx.replica_id.unique_id if ctx else "local"
        self._metrics = Recorder()  # raygrade.metrics: exported as ray_raygrade_* on each node's metrics port
        self._tags = {"provider": provider.name, "model": provider.model}
        self._node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        self._blobs: dict[str, BlobStore] = {}

    async def _get(self) -> BatchGrader | ReferenceSimilarityGrader:
        if self._grader is None:
            self._grader = cluster_grader(self._config, self._namespace,
                                          max_parse_retries=self._batcher_config.max_parse_retries,
                                          model_handle=self._model_handle)
        return self._grader

    async def ready(self) -> None:
        """Return once this replica can grade: its grader built (the baseline's embedding model
        loaded) and, for a model served in the application, that model answering its health
        check (``LLMServer.check_health``: the engine is up). A caller bounds the wait."""
        await self._get()
        if self._model_handle is not None:
            await self._model_handle.check_health.remote()

    async def _read_pages(self, batch: GradeBatch, pages_from: PagesFrom | None) -> GradeBatch:
        """``batch`` with its stored page images read from ``pages_from``'s blob store (SHA-256
        checked), on a thread.

        Raises:
            PagesElsewhere: the store is a folder on another node than this replica's, or this
                replica cannot open it (e.g. object storage without credentials on its node).
            StorageError: a page image is missing or corrupt (its items fail with it).
        """
        if pages_from is None or not has_stored_pages(batch):
            return batch
        if is_local(pages_from.blob_uri) and pages_from.node_id != self._node_id:
            raise PagesElsewhere(f"page images are in a folder on node {pages_from.node_id[:12]}")
        if (blobs := self._blobs.get(pages_from.blob_uri)) is None:
            try:
                blobs = self._blobs[pages_from.blob_uri] = BlobStore(pages_from.blob_uri)
            except StorageError as exc:
                raise PagesElsewhere(f"this replica cannot open the blob store: {exc.message}") from None
        return await asyncio.to_thread(inline_batch, batch, blobs)

    async def grade(self, batch: GradeBatch, pages_from: PagesFrom | None = None) -> tuple[BatchOutcome, str]:
        """Grade a batch; returns the outcome and this replica's id. Its stored page images
        (:class:`raygrade.protocol.StoredImage`) are read from ``pages_from`` first.

        Raises:
            PagesElsewhere: this replica cannot read ``pages_from`` (nothing was graded).
        """
        batch = await self._read_pages(batch, pages_from)
        grader = await self._get()
        t0 = time.monotonic()
        with span("raygrade.grade", {"raygrade.batch_id": batch.batch_id, "raygrade.replica": self.replica_id}) as s:
            outcome = await grader.grade(batch)
            s.set_attributes({"raygrade.graded": len(outcome.results), "raygrade.calls": outcome.calls})
        m, tags = self._metrics, self._tags
        m.observe("raygrade_batch_latency_seconds", time.monotonic() - t0, tags)
        m.observe("raygrade_batch_limiter_wait_seconds", outcome.limiter_wait_s, tags)
        m.observe("raygrade_batch_provider_seconds", outcome.provider_s, tags)
        m.observe("raygrade_batch_grant_to_send_seconds", outcome.grant_to_send_s, tags)
        m.inc("raygrade_items_graded", len(outcome.results), tags)
        m.inc("raygrade_provider_tokens", outcome.usage.prompt_tokens, {**tags, "kind": "prompt"})
        m.inc("raygrade_provider_tokens", outcome.usage.completion_tokens, {**tags, "kind": "completion"})
        # the part of the prompt tokens read from the provider's prompt cache
        m.inc("raygrade_provider_tokens", outcome.cached_prompt_tokens, {**tags, "kind": "cached_prompt"})
        return outcome, self.replica_id
