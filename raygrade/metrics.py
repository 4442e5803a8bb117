"""raygrade's Prometheus metrics, defined in one place.

They go through Ray's metrics API (:mod:`ray.util.metrics`), so Ray's metrics agent on each
node exports them with Ray's prefix: ``ray_<name>`` on the node's metrics port, next to Ray's
and Serve's own (scraped by the Prometheus that ``ray metrics launch-prometheus`` or the
KubeRay setup runs). The Grafana dashboard ``deploy/grafana/raygrade.json`` is generated from
:data:`METRICS` (``python scripts/grafana_dashboard.py``).

Who reports what: Grader replicas the items, tokens and batch latency (split into limiter
wait and provider time); the Batcher the jobs by state, the queue of pending batches, job
durations, failed items by error type and webhook deliveries; the ingress the jobs that
tenants' quotas refused; the rate-limiter actor the
limiter's admissions, 429s, utilisation, queue, pause and circuit-breaker state.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

#: Latency buckets, seconds.
SECONDS = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900]
#: Job duration buckets, seconds.
JOB_SECONDS = [1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400]


@dataclasses.dataclass(frozen=True)
class Metric:
    """One metric: ``name`` (without Ray's ``ray_`` prefix), kind, help text (ASCII: Ray's metrics
    layer rejects other characters), tag keys, buckets."""

    name: str
    kind: Literal["counter", "gauge", "histogram"]
    description: str
    tags: tuple[str, ...]
    boundaries: tuple[float, ...] = ()

    @property
    def exported(self) -> str:
        """The series name Prometheus sees: Ray prefixes ``ray_``; counters get ``_total``,
        histograms ``_bucket``/``_sum``/``_count`` (this returns the stem)."""
        return f"ray_{self.name}_total" if self.kind == "counter" else f"ray_{self.name}"

    def promql(self) -> list[tuple[str, str]]:
        """``[(legend, PromQL)]`` for a dashboard panel of this metric."""
        by = ", ".join(t for t in self.tags if t not in ("namespace",)) or "instance"
        if self.kind == "counter":
            return [("{{" + by.split(", ")[0] + "}}", f"sum by ({by}) (rate({self.exported}[5m]))")]
        if self.kind == "gauge":
            return [("{{" + by.split(", ")[0] + "}}", f"max by ({by}) ({self.exported})")]
        return [(f"p{q}", f"histogram_quantile(0.{q}, sum by (le) (rate({self.exported}_bucket[5m])))")
                for q in (50, 95)]


_P = ("provider", "model")
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("raygrade_items_graded", "counter", "Items (student x question) graded.", _P),
    Metric("raygrade_items_failed", "counter", "Items that ended with an error, by error type.",
           ("namespace", "error_type")),
    Metric("raygrade_provider_tokens", "counter", "Tokens the provider reported.", (*_P, "kind")),
    Metric("raygrade_batch_latency_seconds", "histogram", "Seconds to grade one batch (limiter wait + provider).",
           _P, tuple(SECONDS)),
    Metric("raygrade_batch_limiter_wait_seconds", "histogram", "Seconds a batch waited in the rate limiter.",
           _P, tuple(SECONDS)),
    Metric("raygrade_batch_provider_seconds", "histogram", "Seconds a batch spent in provider calls.",
           _P, tuple(SECONDS)),
    Metric("raygrade_batch_grant_to_send_seconds", "histogram",
           "Seconds from the rate limiter's grant to the request leaving this replica (longest call of a batch).",
           _P, tuple(SECONDS)),
    Metric("raygrade_jobs", "gauge", "Jobs in the store by state.", ("namespace", "state")),
    Metric("raygrade_batches_pending", "gauge", "Planned batches not yet dispatched (the queue).", ("namespace",)),
    Metric("raygrade_job_duration_seconds", "histogram", "Seconds from a job's acceptance to its end.",
           ("namespace", "state"), tuple(JOB_SECONDS)),
    Metric("raygrade_jobs_refused", "counter", "Jobs a tenant's quota refused (HTTP 429), by quota.",
           ("namespace", "quota")),
    Metric("raygrade_webhook_deliveries", "counter", "Webhook delivery attempts by outcome.",
           ("namespace", "outcome")),
    Metric("raygrade_limiter_admitted_requests", "counter", "Calls the rate limiter admitted.", ("key",)),
    Metric("raygrade_limiter_admitted_tokens", "counter", "Tokens the rate limiter reserved.", ("key",)),
    Metric("raygrade_limiter_rate_limited", "counter", "Provider 429 answers seen by the rate limiter.", ("key",)),
    Metric("raygrade_limiter_quota_refused", "counter",
           "Calls refused because the key's requests per day are spent until after their patience.", ("key",)),
    Metric("raygrade_limiter_utilisation", "gauge",
           "Share of the RPM/TPM window (or of the day's requests, dimension requests_per_day) in use (0-1).",
           ("key", "dimension")),
    Metric("raygrade_limiter_waiting", "gauge", "Callers queued in the rate limiter.", ("key",)),
    Metric("raygrade_limiter_count_ratio", "gauge",
           "The provider's prompt-token count divided by raygrade's estimates, for text and for images "
           "(learned; reservations use it).", ("key", "content")),
    Metric("raygrade_limiter_paused", "gauge", "1 while a 429 pauses every caller of the key.", ("key",)),
    Metric("raygrade_breaker_state", "gauge", "Circuit breaker: 0 closed, 1 half-open, 2 open.", ("key",)),
)}

BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


class Recorder:
    """Lazily created Ray metric objects for :data:`METRICS` (one process's view).

    ``inc``/``set``/``observe`` take the metric's name and its tags; increments of 0 are
    skipped (Ray's counters reject them).
    """

    def __init__(self):
        self._made: dict[str, object] = {}

    def _get(self, name: str):
        if name not in self._made:
            from ray.util import metrics

            m = METRICS[name]
            if m.kind == "counter":
                self._made[name] = metrics.Counter(m.name, m.description, m.tags)
            elif m.kind == "gauge":
                self._made[name] = metrics.Gauge(m.name, m.description, m.tags)
            else:
                self._made[name] = metrics.Histogram(m.name, m.description, list(m.boundaries), m.tags)
        return self._made[name]

    def inc(self, name: str, value: float, tags: dict[str, str]) -> None:
        if value > 0:
            self._get(name).inc(value, tags)

    def set(self, name: str, value: float, tags: dict[str, str]) -> None:
        self._get(name).set(value, tags)

    def observe(self, name: str, value: float, tags: dict[str, str]) -> None:
        self._get(name).observe(value, tags)
