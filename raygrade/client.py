"""Clients of raygrade's HTTP API: :class:`Client` (sync) and :class:`AsyncClient` (asyncio).

Every route has a method: ``submit`` (``POST /v1/jobs``, with an idempotency key), ``list_jobs``,
``status``, ``results``, ``cancel``, ``replicas``, ``usage``, and ``wait`` (polls until the job ends, with an
optional progress callback or bar). Failures raise raygrade's own exception tree
(:mod:`raygrade.errors`), rebuilt from the server's OpenAI-shaped error body: a 400 is an
:class:`~raygrade.errors.InvalidRequestError`, a 404 a :class:`~raygrade.errors.NotFoundError`,
a 409 a :class:`~raygrade.errors.ConflictError` (or its ``IllegalTransitionError``), and so on;
each carries ``http_status`` and the parsed ``body``. Transport failures raise
:class:`APIConnectionError`; an answer that is not raygrade's error body raises
:class:`APIStatusError`. Modelled on openai-python's clients.

Example::

    from raygrade import Client

    with Client("http://127.0.0.1:8000", api_key="rg_...") as client:  # or $RAYGRADE_API_KEY
        status = client.submit(job, idempotency_key="term-3-physics")
        final = client.wait(status.id, progress=True)
        grades = client.results(final.id).results
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
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
from raygrade.protocol import GradingJob, JobList, JobResults, JobState, JobStatus, TenantUsage


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


def _check(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        raise error_from_response(r)
    return r.json()


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


class Client:
    """Synchronous client.

    Args:
        base_url: The app's URL, e.g. ``http://127.0.0.1:8000`` (plus its route prefix).
        api_key: The tenant's API key (``raygrade keys create``); default ``$RAYGRADE_API_KEY``.
        timeout_s: Per-request timeout, seconds.
        headers: Sent with every request (e.g. a gateway's own header).
    """

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 60.0,
                 headers: dict[str, str] | None = None):
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s,
                                  headers=_auth_headers(api_key, headers))

    def _call(self, method: str, path: str, **kw) -> Any:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise APIConnectionError(f"{method} {path}: {type(exc).__name__}") from exc
        return _check(r)

    def submit(self, job: GradingJob | dict[str, Any], idempotency_key: str | None = None) -> JobStatus:
        """``POST /v1/jobs``: the new job's status (or, for a replayed key, the existing job's).

        Raises:
            InvalidRequestError: the job is invalid (``param`` names the field).
            ConflictError: the key was used with a different body.
            QuotaExceededError: the tenant's quota refuses a new job (``retry_after_s``: when to try again).
        """
        return JobStatus.model_validate(self._call("POST", "/v1/jobs", content=_job_body(job),
                                                   headers=_headers(idempotency_key)))

    def list_jobs(self, status: JobState | str | None = None, limit: int = 20, after: str | None = None) -> JobList:
        """``GET /v1/jobs``: a page of this tenant's jobs, newest first (next page: ``after=page.last_id``)."""
        return JobList.model_validate(self._call("GET", "/v1/jobs", params=_list_params(status, limit, after)))

    def status(self, job_id: str) -> JobStatus:
        """``GET /v1/jobs/{id}``. Raises :class:`NotFoundError` for an unknown id."""
        return JobStatus.model_validate(self._call("GET", f"/v1/jobs/{job_id}"))

    def results(self, job_id: str) -> JobResults:
        """``GET /v1/jobs/{id}/results`` (partial while the job runs)."""
        return JobResults.model_validate(self._call("GET", f"/v1/jobs/{job_id}/results"))

    def cancel(self, job_id: str) -> JobStatus:
        """``POST /v1/jobs/{id}/cancel``. Raises ``IllegalTransitionError`` (a :class:`ConflictError`)
        once the job has ended."""
        return JobStatus.model_validate(self._call("POST", f"/v1/jobs/{job_id}/cancel"))

    def replicas(self, job_id: str) -> dict[str, int]:
        """``GET /v1/jobs/{id}/replicas``: batches graded per grader replica."""
        return self._call("GET", f"/v1/jobs/{job_id}/replicas")

    def usage(self) -> TenantUsage:
        """``GET /v1/usage``: this tenant's quota and what counts against it now."""
        return TenantUsage.model_validate(self._call("GET", "/v1/usage"))

    def wait_ready(self, *, timeout_s: float = 600, poll_s: float = 1.0) -> None:
        """Poll ``GET /readyz`` until the app could grade a job (200): the store answers, a Grader
        replica is up and every model in the application passed its health check. A 503 (a model
        loading) or no connection yet (the server starting) is waited out.

        Raises:
            TimeoutError: not ready after ``timeout_s`` seconds (the message gives the last reason).
            RaygradeError: any other answer (e.g. a URL that is not raygrade's: 404).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                reason = _readiness(self._http.get("/readyz"))
            except httpx.TransportError as exc:
                reason = f"no connection ({type(exc).__name__})"
            if reason is None:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready after {timeout_s:g}s: {reason}")
            time.sleep(poll_s)

    def wait(self, job_id: str, *, timeout_s: float = 3600, poll_s: float = 1.0,
             progress: bool | Callable[[JobStatus], None] = False) -> JobStatus:
        """Poll until the job is terminal; returns its final status.

        Args:
            progress: ``True`` for a tqdm bar over items, or a callback given each status.

        Raises:
            TimeoutError: not terminal after ``timeout_s`` seconds.
        """
        deadline, bar = time.monotonic() + timeout_s, _Progress(progress)
        try:
            while True:
                st = self.status(job_id)
                bar.update(st)
                if st.state.terminal:
                    return st
                if time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} not finished after {timeout_s}s")
                time.sleep(poll_s)
        finally:
            bar.close()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient:
    """Asynchronous client (same methods as :class:`Client`, awaitable)."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 60.0,
                 headers: dict[str, str] | None = None):
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout_s,
                                       headers=_auth_headers(api_key, headers))

    async def _call(self, method: str, path: str, **kw) -> Any:
        try:
            r = await self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise APIConnectionError(f"{method} {path}: {type(exc).__name__}") from exc
        return _check(r)

    async def submit(self, job: GradingJob | dict[str, Any], idempotency_key: str | None = None) -> JobStatus:
        """``POST /v1/jobs`` (see :meth:`Client.submit`)."""
        return JobStatus.model_validate(await self._call("POST", "/v1/jobs", content=_job_body(job),
                                                         headers=_headers(idempotency_key)))

    async def list_jobs(self, status: JobState | str | None = None, limit: int = 20, after: str | None = None
                        ) -> JobList:
        """``GET /v1/jobs`` (see :meth:`Client.list_jobs`)."""
        return JobList.model_validate(await self._call("GET", "/v1/jobs", params=_list_params(status, limit, after)))

    async def status(self, job_id: str) -> JobStatus:
        return JobStatus.model_validate(await self._call("GET", f"/v1/jobs/{job_id}"))

    async def results(self, job_id: str) -> JobResults:
        return JobResults.model_validate(await self._call("GET", f"/v1/jobs/{job_id}/results"))

    async def cancel(self, job_id: str) -> JobStatus:
        return JobStatus.model_validate(await self._call("POST", f"/v1/jobs/{job_id}/cancel"))

    async def replicas(self, job_id: str) -> dict[str, int]:
        return await self._call("GET", f"/v1/jobs/{job_id}/replicas")

    async def usage(self) -> TenantUsage:
        """``GET /v1/usage`` (see :meth:`Client.usage`)."""
        return TenantUsage.model_validate(await self._call("GET", "/v1/usage"))

    async def wait_ready(self, *, timeout_s: float = 600, poll_s: float = 1.0) -> None:
        """Poll ``GET /readyz`` until 200 (see :meth:`Client.wait_ready`)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                reason = _readiness(await self._http.get("/readyz"))
            except httpx.TransportError as exc:
                reason = f"no connection ({type(exc).__name__})"
            if reason is None:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready after {timeout_s:g}s: {reason}")
            await asyncio.sleep(poll_s)

    async def wait(self, job_id: str, *, timeout_s: float = 3600, poll_s: float = 1.0,
                   progress: bool | Callable[[JobStatus], None] = False) -> JobStatus:
        """Poll until the job is terminal (see :meth:`Client.wait`)."""
        deadline, bar = time.monotonic() + timeout_s, _Progress(progress)
        try:
            while True:
                st = await self.status(job_id)
                bar.update(st)
                if st.state.terminal:
                    return st
                if time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} not finished after {timeout_s}s")
                await asyncio.sleep(poll_s)
        finally:
            bar.close()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
