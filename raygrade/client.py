"""Clients of raygrade's HTTP API: :class:`Client` (sync) and :class:`AsyncClient` (asyncio).

Every route has a method: ``submit`` (``POST /v1/jobs``, with an idempotency key), ``list_jobs``,
``status``, ``results``, ``results_csv``, ``cancel``, ``replicas``, ``usage``; for teachers'
reviews ``reviews``, ``review``, ``regrade``, ``answer_groups`` and ``review_group``; ``wait``
(polls until the job ends, with an optional progress callback or bar) and ``wait_ready`` (polls
``/readyz``); ``client.files`` uploads page files (:mod:`raygrade._client_files`). Failures raise
raygrade's own exception tree (:mod:`raygrade.errors`), rebuilt from the server's OpenAI-shaped
error body: a 400 is an :class:`~raygrade.errors.InvalidRequestError`, a 404 a :class:`~raygrade.errors.NotFoundError`,
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
import time
from collections.abc import Callable
from typing import Any

import httpx

from raygrade._client_files import AsyncFiles, Files
from raygrade._client_http import (
    APIConnectionError,
    APIStatusError,
    _auth_headers,
    _check,
    _headers,
    _job_body,
    _list_params,
    _Progress,
    _readiness,
    _review_params,
    error_from_response,
)
from raygrade.protocol import (
    AnswerGroupList,
    GradingJob,
    JobList,
    JobResults,
    JobState,
    JobStatus,
    ReviewItem,
    ReviewList,
    TenantUsage,
)

__all__ = ["APIConnectionError", "APIStatusError", "AsyncClient", "Client", "error_from_response"]


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
        self.files = Files(self._call)  #: The Files API (:class:`raygrade._client_files.Files`).

    def _call(self, method: str, path: str, *, raw: bool = False, **kw) -> Any:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise APIConnectionError(f"{method} {path}: {type(exc).__name__}") from exc
        return _check(r, raw=raw)

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

    def results_csv(self, job_id: str) -> str:
        """``GET /v1/jobs/{id}/results?format=csv``: one row per student × question, final and model
        scores, who graded, the reviewer (:data:`raygrade.export.CSV_COLUMNS`)."""
        return self._call("GET", f"/v1/jobs/{job_id}/results", params={"format": "csv"}, raw=True).text

    def reviews(self, *, job_id: str | None = None, question_id: str | None = None, status: str | None = None,
                limit: int = 50, after: str | None = None) -> ReviewList:
        """``GET /v1/reviews``: items flagged for review (``status="pending"``), reviewed (``"done"``)
        or both; next page: ``after=page.last_id``. Raises :class:`NotFoundError` for an unknown job."""
        return ReviewList.model_validate(self._call("GET", "/v1/reviews", params=_review_params(
            job_id, question_id, status, limit, after)))

    def review(self, job_id: str, item_id: str, score: float, comment: str | None = None) -> ReviewItem:
        """``POST /v1/jobs/{job_id}/items/{item_id}/review``: a teacher's score replaces the model's.

        Raises:
            InvalidRequestError: the score is off the question's grid (``param == "score"``).
            IllegalTransitionError: the item is not graded.
            NotFoundError: no such job or item.
        """
        return ReviewItem.model_validate(self._call("POST", f"/v1/jobs/{job_id}/items/{item_id}/review",
                                                    json={"score": score, "comment": comment}))

    def regrade(self, job_id: str, question_id: str) -> JobStatus:
        """``POST /v1/jobs/{id}/regrade?question_id=``: a regrade job (``regrade_of``) for the question's
        unreviewed items, with its reviewed answers as examples; wait for it, then read ``job_id``'s results.

        Raises:
            ConflictError: the job has not ended (``IllegalTransitionError``), or no review to learn from.
            NotFoundError: no such job or question.
        """
        return JobStatus.model_validate(self._call("POST", f"/v1/jobs/{job_id}/regrade",
                                                   params={"question_id": question_id}))

    def answer_groups(self, job_id: str, question_id: str, threshold: float | None = None) -> AnswerGroupList:
        """``GET /v1/jobs/{id}/questions/{q}/groups``: the question's graded answers in groups of
        similar answers (``threshold``: cosine distance, default the server's 0.25)."""
        params = {} if threshold is None else {"threshold": threshold}
        return AnswerGroupList.model_validate(self._call("GET", f"/v1/jobs/{job_id}/questions/{question_id}/groups",
                                                         params=params))

    def review_group(self, job_id: str, question_id: str, group_id: str, score: float, comment: str | None = None,
                     threshold: float | None = None) -> ReviewList:
        """``POST …/groups/{group_id}/review``: one score for the group's members not reviewed yet
        (use the ``threshold`` the groups were listed with). Raises as :meth:`review`."""
        params = {} if threshold is None else {"threshold": threshold}
        return ReviewList.model_validate(self._call(
            "POST", f"/v1/jobs/{job_id}/questions/{question_id}/groups/{group_id}/review", params=params,
            json={"score": score, "comment": comment}))

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
        self.files = AsyncFiles(self._call)  #: The Files API (:class:`raygrade._client_files.AsyncFiles`).

    async def _call(self, method: str, path: str, *, raw: bool = False, **kw) -> Any:
        try:
            r = await self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise APIConnectionError(f"{method} {path}: {type(exc).__name__}") from exc
        return _check(r, raw=raw)

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

    async def results_csv(self, job_id: str) -> str:
        """``GET /v1/jobs/{id}/results?format=csv`` (see :meth:`Client.results_csv`)."""
        return (await self._call("GET", f"/v1/jobs/{job_id}/results", params={"format": "csv"}, raw=True)).text

    async def reviews(self, *, job_id: str | None = None, question_id: str | None = None,
                      status: str | None = None, limit: int = 50, after: str | None = None) -> ReviewList:
        """``GET /v1/reviews`` (see :meth:`Client.reviews`)."""
        return ReviewList.model_validate(await self._call("GET", "/v1/reviews", params=_review_params(
            job_id, question_id, status, limit, after)))

    async def review(self, job_id: str, item_id: str, score: float, comment: str | None = None) -> ReviewItem:
        """``POST /v1/jobs/{job_id}/items/{item_id}/review`` (see :meth:`Client.review`)."""
        return ReviewItem.model_validate(await self._call("POST", f"/v1/jobs/{job_id}/items/{item_id}/review",
                                                          json={"score": score, "comment": comment}))

    async def regrade(self, job_id: str, question_id: str) -> JobStatus:
        """``POST /v1/jobs/{id}/regrade`` (see :meth:`Client.regrade`)."""
        return JobStatus.model_validate(await self._call("POST", f"/v1/jobs/{job_id}/regrade",
                                                         params={"question_id": question_id}))

    async def answer_groups(self, job_id: str, question_id: str, threshold: float | None = None
                            ) -> AnswerGroupList:
        """``GET /v1/jobs/{id}/questions/{q}/groups`` (see :meth:`Client.answer_groups`)."""
        params = {} if threshold is None else {"threshold": threshold}
        return AnswerGroupList.model_validate(await self._call(
            "GET", f"/v1/jobs/{job_id}/questions/{question_id}/groups", params=params))

    async def review_group(self, job_id: str, question_id: str, group_id: str, score: float,
                           comment: str | None = None, threshold: float | None = None) -> ReviewList:
        """``POST …/groups/{group_id}/review`` (see :meth:`Client.review_group`)."""
        params = {} if threshold is None else {"threshold": threshold}
        return ReviewList.model_validate(await self._call(
            "POST", f"/v1/jobs/{job_id}/questions/{question_id}/groups/{group_id}/review", params=params,
            json={"score": score, "comment": comment}))

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
