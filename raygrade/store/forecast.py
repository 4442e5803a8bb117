"""A review target's share forecast before grading, from the confidences of the namespace's recent
jobs graded by the same model (:class:`ReviewForecasts`, a part of :class:`raygrade.store.JobStore`)."""

from __future__ import annotations

import sqlalchemy as sa

from raygrade.protocol import ReviewPlan, ReviewTarget
from raygrade.review import target_cut
from raygrade.store.schema import items, jobs

#: At most this many recent finished jobs, and this many of their graded items, make the history.
HISTORY_JOBS, HISTORY_ITEMS = 50, 5000
#: Fewer graded items than this: no forecast.
MIN_HISTORY = 50


class ReviewForecasts:
    """Forecast operations of :class:`raygrade.store.JobStore` (needs ``engine``)."""

    engine: sa.Engine

    @staticmethod
    def _confidence_history(conn, namespace: str, model: str | None) -> list[float]:
        finished = (jobs.c.namespace == namespace, jobs.c.state.in_(("succeeded", "partial")))
        if model is None:  # the deployment's default: the model that graded the latest finished job
            model = conn.execute(sa.select(jobs.c.model).where(*finished, jobs.c.model.is_not(None))
                                 .order_by(jobs.c.finished_at.desc()).limit(1)).scalar_one_or_none()
            if model is None:
                return []
        recent = (sa.select(jobs.c.id).where(*finished, jobs.c.model == model)
                  .order_by(jobs.c.finished_at.desc()).limit(HISTORY_JOBS))
        return [c for (c,) in conn.execute(sa.select(items.c.confidence).where(
            items.c.job_id.in_(recent), items.c.state == "graded").limit(HISTORY_ITEMS)) if c is not None]

    def _forecast(self, conn, namespace: str, model: str | None, target: ReviewTarget | None) -> ReviewPlan | None:
        if target is None or target.metric != "exact":
            return None  # a QWK target needs the job's own questions and grades
        history = self._confidence_history(conn, namespace, model)
        if len(history) < MIN_HISTORY:
            return None
        picked, expected = target_cut(history, target.value)
        return ReviewPlan(metric="exact", target=target.value, flagged=0, share=len(picked) / len(history),
                          expected=expected, basis="history", history_items=len(history))

    def review_forecast(self, namespace: str, model: str | None, target: ReviewTarget) -> ReviewPlan | None:
        """The share of items an exact ``target`` is expected to flag, were the job's confidences
        distributed as those of the namespace's last :data:`HISTORY_JOBS` finished jobs graded
        by ``model`` (``None``: the deployment's default, taken as the model of the latest finished
        job; at most :data:`HISTORY_ITEMS` items):
        ``None`` for a QWK target or with fewer than :data:`MIN_HISTORY` graded items. What a job
        with a review target shows in its status until it ends (``basis: history``)."""
        with self.engine.connect() as conn:
            return self._forecast(conn, namespace, model, target)
