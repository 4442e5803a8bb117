"""``Grader``: autoscaling replicas that grade batches through one provider.

Each replica builds an :class:`~raygrade.providers.openai_compat.OpenAICompatibleProvider`
(hosted API, vLLM on a GPU node, or the embedded CPU vLLM) and reserves every
call in the cluster-wide token bucket actor; or, for ``kind="reference_similarity"``,
the zero-cost baseline grader, which calls no provider.
"""

from __future__ import annotations

import logging
import time

from ray import serve
from ray.util import metrics

from raygrade.baseline.similarity import ReferenceSimilarityGrader
from raygrade.config import BatcherConfig, ProviderConfig
from raygrade.grading import BatchGrader, BatchOutcome, GradeBatch, cluster_grader

logger = logging.getLogger(__name__)


@serve.deployment(name="Grader", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=16,
                  autoscaling_config={"min_replicas": 2, "max_replicas": 4, "target_ongoing_requests": 4})
class Grader:
    """Grades one :class:`GradeBatch` per call.

    Args:
        provider: The provider config.
        batcher: Retry bounds for schema-invalid output.
        namespace: Ray namespace of the shared token bucket.
        engine: Handle to ``LocalVLLMServer`` when the provider is the embedded engine.
    """

    def __init__(self, provider: ProviderConfig, batcher: BatcherConfig, namespace: str, engine=None):
        if provider.kind == "openai_compatible" and provider.check_on_start:
            # A missing key, an unreachable endpoint or an unknown model fails the replica here:
            # the deployment is unhealthy with this message in `serve status`, no job is taken.
            from raygrade.providers.openai_compat import check_provider

            check_provider(provider)
        self._config, self._batcher_config = provider, batcher
        self._namespace = namespace
        self._engine = engine
        self._grader: BatchGrader | ReferenceSimilarityGrader | None = None
        ctx = serve.get_replica_context()
        self.replica_id = ctx.replica_id.unique_id if ctx else "local"
        # Exported on Ray's Prometheus endpoint (ray_raygrade_* on each node's metrics port).
        tags = ("provider", "model")
        self._items = metrics.Counter("raygrade_items_graded", "Items (student x question) graded.", tags)
        self._failed = metrics.Counter("raygrade_items_failed", "Items that ended with an error.", tags)
        self._tokens = metrics.Counter("raygrade_provider_tokens", "Tokens reported by the provider.",
                                       (*tags, "kind"))
        self._latency = metrics.Histogram("raygrade_batch_latency_s", "Seconds to grade one batch.",
                                          [0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900], tags)
        self._tags = {"provider": provider.name, "model": provider.model}

    async def _get(self) -> BatchGrader | ReferenceSimilarityGrader:
        if self._grader is None:
            base_url = None
            if self._engine is not None:
                base_url = (await self._engine.info.remote())["base_url"]
            self._grader = cluster_grader(self._config, self._namespace, base_url=base_url,
                                          max_parse_retries=self._batcher_config.max_parse_retries)
        return self._grader

    async def grade(self, batch: GradeBatch) -> tuple[BatchOutcome, str]:
        """Grade a batch; returns the outcome and this replica's id."""
        grader = await self._get()
        t0 = time.monotonic()
        outcome = await grader.grade(batch)
        self._latency.observe(time.monotonic() - t0, self._tags)
        failed = sum(e.item_count for e in outcome.errors)
        for counter, n, tags in (
                (self._items, len(outcome.results), self._tags),
                (self._failed, failed, self._tags),
                (self._tokens, outcome.usage.prompt_tokens, {**self._tags, "kind": "prompt"}),
                (self._tokens, outcome.usage.completion_tokens, {**self._tags, "kind": "completion"})):
            if n > 0:  # Ray counters reject increments of 0
                counter.inc(n, tags)
        return outcome, self.replica_id
