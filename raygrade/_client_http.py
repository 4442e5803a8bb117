"""The HTTP plumbing :mod:`raygrade.client`'s clients share: the error body turned back into
raygrade's exceptions, request headers and parameters, and the progress bar of ``wait``."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import httpx

from raygrade.errors import (
    AuthenticationError,
    ConfigError,
    ConflictError,
    IllegalTransitionError,
    InvalidRequestError,
    MissingDependencyError,
    NotFoundError,
    PlanningError,
    QuotaExceededError,
    RaygradeError,
    ReadingError,
    StorageError,
)
from raygrade.protocol import GradingJob, JobState, JobStatus


class APIStatusError(RaygradeError):
    """The server answered an error without raygrade's error body (a proxy, a load balancer)."""

    error_type = "api_status_error"


class APIConnectionError(RaygradeError):
    """The server could not be reached, or the connection failed mid-request."""

    error_type = "api_connection_error"


def _error_types() -> dict[str, type[RaygradeError]]:
    classes = (InvalidRequestError, AuthenticationError, NotFoundError, ConflictError, IllegalTransitionError,
               PlanningError, ReadingError, StorageError, ConfigError, MissingDependencyError, QuotaExceededError)
    return {c.error_type: c for c in classes}


def error_from_response(r: httpx.Response) -> RaygradeError:
    """The exception for an error response: raygrade's class for the body's ``error.type``.

    The result has ``http_status`` (int) and ``body`` (the parsed JSON, or ``None``); a
    :class:`~raygrade.errors.QuotaExceededError` has ``retry_after_s`` from ``Retry-After``.
    """
    try:
        body = r.json()
        err = body["error"]
        message, etype = str(err["message"]), str(err.get("type") or "")
    except (ValueError, KeyError, TypeError):
        exc: RaygradeError = APIStatusError(f"HTTP {r.status_code} from {r.request.url.path}: {r.text[:200]}")
        exc.http_status, exc.body = r.status_code, None
        return exc
    cls = _error_types().get(etype, APIStatusError)
    exc = cls(message, param=err.get("param"), code=err.get("code"))
    exc.http_status, exc.body = r.status_code, body
    if isinstance(exc, QuotaExceededError):
        try:
            exc.retry_after_s = float(r.headers["retry-after"])
        except (KeyError, ValueError):
            pass
    return exc


def _check(r: httpx.Response, raw: bool = False) -> Any:
    if r.status_code >= 400:
        raise error_from_response(r)
    return r if raw else r.json()


def _review_params(job_id: str | None, question_id: str | None, status: str | None, limit: int,
                   after: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": limit}
    for k, v in (("job_id", job_id), ("question_id", question_id), ("status", status), ("after", after)):
        if v is not None:
            params[k] = v
    return params


def _readiness(r: httpx.Response) -> str | None:
    """None when ``GET /readyz`` answered 200; else why not yet (the 503's ``reason``). Any other
    status raises the API's error (:func:`error_from_response`)."""
    if r.status_code == 200:
        return None
    if r.status_code == 503:
        try:
            return str(r.json().get("reason") or "503")
        except ValueError:
            return "503"
    raise error_from_response(r)


def _job_body(job: GradingJob | dict[str, Any]) -> bytes:
    """The request body: a model as its JSON; a dict as it is (the server validates it and names the field)."""
    import json

    return job.model_dump_json().encode() if isinstance(job, GradingJob) else json.dumps(job).encode()


def _auth_headers(api_key: str | None, headers: dict[str, str] | None) -> dict[str, str]:
    """``headers`` plus ``Authorization: Bearer`` with ``api_key`` (default ``$RAYGRADE_API_KEY``)."""
    key = api_key if api_key is not None else os.environ.get("RAYGRADE_API_KEY")
    return {**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}


def _list_params(status: JobState | str | None, limit: int, after: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": limit}
    if status is not None:
        params["status"] = JobState(status).value
    if after is not None:
        params["after"] = after
    return params


def _headers(idempotency_key: str | None) -> dict[str, str]:
    h = {"content-type": "application/json"}
    if idempotency_key:
        h["Idempotency-Key"] = idempotency_key
    return h


class _Progress:
    """A tqdm bar over items (``progress=True``) or a callback given each :class:`JobStatus`."""

    def __init__(self, progress: bool | Callable[[JobStatus], None]):
        self._callback = progress if callable(progress) else None
        self._bar = None
        if progress is True:
            from tqdm import tqdm

            self._bar = tqdm(total=0, unit="item", desc="grading", file=sys.stderr)

    def update(self, st: JobStatus) -> None:
        if self._callback is not None:
            self._callback(st)
        if self._bar is not None:
            p = st.progress
            self._bar.total = p.items_total
            self._bar.n = p.items_graded + p.items_failed + p.items_cancelled
            self._bar.set_postfix(batches=f"{p.batches_done}/{p.batches_total}", failed=p.items_failed,
                                  state=st.state.value)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
