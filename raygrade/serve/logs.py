"""Log fields shared by the deployments that handle jobs."""

from __future__ import annotations


def ids(job_id: str, batch_id: str | None = None) -> dict[str, str]:
    """``extra=`` for a job's log lines: fields of their own in Serve's JSON logs
    (``logging_config: {encoding: JSON}``), so an operator can follow one job or batch.
    Named ``raygrade_job_id``/``raygrade_batch_id``: Ray's own log context owns ``job_id``."""
    return {"raygrade_job_id": job_id, **({"raygrade_batch_id": batch_id} if batch_id else {})}
