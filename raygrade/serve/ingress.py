"""``RaygradeIngress``: the HTTP API (FastAPI on Ray Serve).

Routes (every one but ``/healthz``, ``/readyz`` and the review page's files needs
``Authorization: Bearer <key>`` unless ``api.auth`` is ``disabled``; a job is its tenant's alone:
another tenant's job id is a 404):
    ``POST /v1/jobs``               → 202 :class:`JobStatus` (200 for an idempotent replay)
    ``GET  /v1/jobs``               → :class:`JobList` of the tenant's jobs (``?status=&limit=&after=``)
    ``GET  /v1/jobs/{id}``          → :class:`JobStatus` with progress counts
    ``GET  /v1/jobs/{id}/results``  → :class:`JobResults` (partial while running; ``?format=csv``: a gradebook's CSV)
    ``GET  /v1/reviews``            → :class:`ReviewList`: items flagged for review, and reviewed
    ``POST /v1/jobs/{id}/items/{item_id}/review`` → :class:`ReviewItem`: a teacher's score replaces the model's
    ``GET  /v1/jobs/{id}/items/{item_id}/pages/{k}`` → the student's page k (image or text)
    ``POST /v1/jobs/{id}/regrade?question_id=`` → 202 :class:`JobStatus` of a regrade learning from the reviews
    ``POST /v1/jobs/{id}/cancel``   → :class:`JobStatus` (``cancelled``; 409 if already ended)
    ``GET  /v1/jobs/{id}/replicas`` → batches graded per grader replica
    ``GET  /v1/usage``              → :class:`TenantUsage`: the tenant's quota and usage
    ``POST /v1/files``              → :class:`FileObject`: a page file uploaded (multipart), split into pages
    ``GET  /v1/files``, ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``, ``DELETE /v1/files/{id}``
    ``POST /v1/files/{id}/split``   → :class:`FileSplit`: a class's scan split into students (pages, roster, QR sheets)
    ``GET  /review``                → the review page (no key; its script asks for one: :mod:`raygrade.web`)
    ``GET  /healthz``               → 200 while the replica answers (liveness)
    ``GET  /readyz``                → 200 once a job could be graded, else 503 (readiness)

Errors use the OpenAI body ``{"error": {"message", "type", "param", "code"}}``;
request validation errors are 400 and name the offending field in ``param``; a missing or
invalid key is 401, a body over ``api.max_body_bytes`` 413, one that stalls 408
(:mod:`raygrade.serve.guard`), a job the tenant's quota refuses 429 (``Retry-After``). The
FastAPI app, its error handlers (the one boundary where raygrade's exceptions become responses)
and shared dependencies are in :mod:`raygrade.serve.http_app`; the review routes in
:mod:`raygrade.serve.review_routes`, the Files API's in :mod:`raygrade.serve.file_routes`.
"""

# No ``from __future__ import annotations``: FastAPI resolves the route annotations
# (GradingJob, Header) at import; string annotations break newer FastAPI under serve.ingress.
import asyncio
import time
from typing import Any, Literal

from fastapi import Header, Query, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from raygrade.blobs import BlobStore, externalize
from raygrade.config import ApiConfig, RaygradeArgs, StoreConfig
from raygrade.errors import InvalidRequestError, QuotaExceededError, raygrade_cause
from raygrade.export import results_csv
from raygrade.metrics import Recorder
from raygrade.planner import planner_for
from raygrade.protocol import (
    GradingJob,
    JobList,
    JobResults,
    JobState,
    JobStatus,
    TenantUsage,
)
from raygrade.serve import HEALTH_CHECK_PERIOD_S
from raygrade.serve.accept import JobAcceptor, NewJob
from raygrade.serve.admission import refuse_unfit
from raygrade.serve.direct_store import DirectStore
from raygrade.serve.file_routes import FileRoutes
from raygrade.serve.guard import Authenticator
from raygrade.serve.http_app import JobId, Tenant, _call, accepted, api, logger
from raygrade.serve.http_errors import error_responses as _errors
from raygrade.serve.review_routes import ReviewRoutes
from raygrade.tracing import extract, inject, span

#: Seconds ``/readyz`` waits for the store, a Grader and the model before answering 503; a
#: readiness probe in flight is shared by every ``/readyz`` call (at most one per replica, ended
#: after :data:`READY_PROBE_S`), and a success is reused for :data:`READY_CACHE_S`.
READY_TIMEOUT_S = 5.0
READY_PROBE_S = 60.0
READY_CACHE_S = 5.0


# Stalled uploads hold a slot each until the guard's body timeouts close them: room for many.
@serve.deployment(name="RaygradeIngress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=2000,
                  num_replicas=1, health_check_period_s=HEALTH_CHECK_PERIOD_S)
@serve.ingress(api)
class RaygradeIngress(ReviewRoutes, FileRoutes):
    """FastAPI ingress: validates jobs, stores their page images, records them, and hands them
    to the batcher.

    Args:
        registry: ``JobRegistry`` handle.
        batcher: ``Batcher`` handle.
        store: The store's settings (where page images go; :mod:`raygrade.blobs`).
        config: Authentication and request bounds (:class:`ApiConfig`).
        namespace: The application's namespace (a tag of its metrics).
        args: The application's arguments: with them, a student that no request to the provider
            could hold is refused at submission (:meth:`raygrade.planner.JobPlanner.unfit`).
    """

    def __init__(self, registry, batcher, store: StoreConfig | None = None, config: ApiConfig | None = None,
                 namespace: str = "raygrade", args: RaygradeArgs | None = None):
        self._registry, self._batcher = registry, batcher
        # A job's status, a tenant's jobs, its results, a replay and a quota's pre-check: read here, not
        # through the registry, where we can; on PostgreSQL new jobs are recorded here too.
        self._reads = DirectStore(registry, store, namespace)
        self._acceptor = JobAcceptor(registry, batcher, direct=self._reads.create_jobs)
        self._metrics, self._ns = Recorder(), namespace
        self._ready_probe: asyncio.Task | None = None  # the one readiness probe in flight (see readyz)
        self._ready_until = 0.0  # monotonic time until which the last success stands
        self._blobs = BlobStore(store.resolved_blob_uri()) if store is not None else None
        self._planner = planner_for(args) if args is not None else None
        self._config = config = config or ApiConfig()
        api.state.api_config = config
        api.state.authenticator = Authenticator(lambda h: registry.tenant_for_key.remote(h), config)
        if config.auth == "disabled":
            logger.warning("authentication is DISABLED (api.auth: disabled): anyone who reaches this port acts as "
                           "tenant 'default'; use it on a laptop or in a test, never on a network")
        else:
            logger.info("API keys required (api.auth: api_keys); bodies up to %d bytes", config.max_body_bytes)

    @api.post("/v1/jobs", status_code=202, response_model=JobStatus, responses={
        200: {"model": JobStatus, "description": "A replay of an idempotency key: the existing job."},
        **_errors(408, 409, 413, 429)})
    async def create_job(self, job: GradingJob, request: Request,
                         idempotency_key: str | None = Header(default=None, alias="Idempotency-Key", min_length=1,
                                                              max_length=256),
                         tenant: str = Tenant) -> JSONResponse:
        if where := job.stored_pages():
            raise InvalidRequestError(f"{where[0]}: pages of type 'stored_image' are internal to raygrade; "
                                      "send 'image' or 'text' pages", param=where[0])
        key = idempotency_key or job.options.idempotency_key
        # A caller's W3C ``traceparent`` is the parent: its trace continues through raygrade.
        with span("raygrade.accept", {"raygrade.tenant": tenant, "raygrade.students": len(job.submissions),
                                      "raygrade.items": job.item_count()}, parent=extract(request.headers)) as s:
            try:
                sent = job.request_hash() if key and (job.has_images() or job.file_pages()) else None
                if key and sent and (replay := await self._reads.replay(key, sent, tenant)):
                    # The same request again: answered before its pages are decoded or resolved (a
                    # file it names may have been deleted since; the job holds its pages already).
                    s.set_attributes({"raygrade.job_id": replay.id, "raygrade.created": False})
                    return await accepted(self._batcher, replay, False, None)
                if job.has_images():
                    # Before the pages are decoded: a job the quota refuses costs no decoding (a replay is
                    # never refused). Text jobs skip this call: the store's transaction checks every job.
                    with span("raygrade.quota"):
                        await self._reads.check_quota(tenant, job.item_count(), key)
                if job.file_pages():
                    # Uploaded files' pages (the Files API): their stored page images, nothing to decode.
                    with span("raygrade.files"):
                        job = await _call(self._registry.resolve_files.remote(job, tenant))
                if self._blobs is not None and job.has_images():
                    # Page bytes go to the blob store here, once; the registry receives references only.
                    with span("raygrade.externalize"):
                        job = await asyncio.to_thread(externalize, job, self._blobs, tenant,
                                                      self._config.max_request_pixels)
                if self._planner is not None:
                    with span("raygrade.admission"):
                        await asyncio.to_thread(refuse_unfit, self._planner, job)
                # Durable first (the outbox): the batcher drives jobs from the store, so a lost
                # nudge only delays the job until the batcher's next poll. Submissions that arrive
                # together are recorded, and their jobs nudged, in one call each (raygrade.serve.accept).
                # The stored form of a job without inline images is what the batcher would read back.
                status, created = await self._acceptor.accept(NewJob(job, key, tenant, inject(), sent,
                                                                     nudge_with_job=not job.has_images()))
            except QuotaExceededError as refused:
                self._metrics.inc("raygrade_jobs_refused", 1, {"namespace": self._ns, "quota": refused.code or ""})
                raise
            s.set_attributes({"raygrade.job_id": status.id, "raygrade.created": created})
            return JSONResponse(status_code=202 if created else 200, content=status.model_dump(mode="json"))

    @api.get("/v1/jobs", response_model=JobList, responses=_errors(404))
    async def list_jobs(self, request: Request, status: JobState | None = Query(default=None),
                        limit: int = Query(default=20, ge=1, le=100),
                        after: str | None = Query(default=None, min_length=1, max_length=64),
                        tenant: str = Tenant) -> JobList:
        """The caller's jobs, newest first; ``after`` = the previous page's ``last_id`` (404 if unknown)."""
        data, more = await self._reads.list_jobs(tenant, status, limit, after, parent=extract(request.headers))
        return JobList(data=data, has_more=more, first_id=data[0].id if data else None,
                       last_id=data[-1].id if data else None)

    @api.get("/v1/jobs/{job_id}", response_model=JobStatus, responses=_errors(404))
    async def get_job(self, request: Request, job_id: str = JobId, tenant: str = Tenant) -> JobStatus:
        return await self._reads.status(job_id, tenant, parent=extract(request.headers))

    @api.get("/v1/jobs/{job_id}/results", response_model=JobResults, responses={
        200: {"content": {"text/csv": {"schema": {"type": "string"}}},
              "description": "The results (JSON), or with `format=csv` one CSV row per student × question."},
        **_errors(404)})
    async def get_results(self, request: Request, job_id: str = JobId,
                          format: Literal["json", "csv"] = Query(default="json"), tenant: str = Tenant) -> Any:
        """Grades and errors so far; a teacher's review replaces the model's score (``graded_by``,
        ``model_score``). ``format=csv``: what a gradebook imports (:mod:`raygrade.export`)."""
        results = await self._reads.results(job_id, tenant, parent=extract(request.headers))
        if format == "csv":
            return Response(content=results_csv(results), media_type="text/csv; charset=utf-8",
                            headers={"Content-Disposition": f'attachment; filename="{job_id}.csv"'})
        return results

    @api.post("/v1/jobs/{job_id}/cancel", response_model=JobStatus, responses=_errors(404, 409))
    async def cancel_job(self, job_id: str = JobId, tenant: str = Tenant) -> JobStatus:
        """Cancel a queued or running job (409 once it has ended); grades already made stay."""
        return await _call(self._registry.cancel.remote(job_id, tenant))

    @api.get("/v1/jobs/{job_id}/replicas", responses=_errors(404))
    async def get_replicas(self, job_id: str = JobId, tenant: str = Tenant) -> dict[str, int]:
        return await _call(self._registry.replicas.remote(job_id, tenant))

    @api.get("/v1/usage", response_model=TenantUsage, responses=_errors())
    async def get_usage(self, tenant: str = Tenant) -> TenantUsage:
        """The caller's quota (``raygrade quotas``) and what counts against it now."""
        return await _call(self._registry.usage.remote(tenant))

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """Liveness: this replica answers HTTP (models may still be loading; see ``/readyz``)."""
        return {"status": "ok"}

    @api.get("/readyz", responses={503: {"description": "Not ready: the store, a grader or the model is not up "
                                                         "yet (`reason` says which part did not answer)."}})
    async def readyz(self) -> JSONResponse:
        """Readiness: 200 once a job could be graded now (the store answers, a Grader replica
        has built its grader, and a model served in the application passed its health check);
        503 while not, e.g. while the embedded model loads. No key needed, as ``/healthz``.

        Probes do not pile up while a model loads: one probe is in flight per replica and every
        caller waits on it (a load balancer polling each second adds no calls to the graph)."""
        if time.monotonic() < self._ready_until:
            return JSONResponse(status_code=200, content={"status": "ready"})
        if self._ready_probe is None or self._ready_probe.done():
            self._ready_probe = asyncio.ensure_future(self._probe_ready())
            self._ready_probe.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning
        try:
            await asyncio.wait_for(asyncio.shield(self._ready_probe), timeout=READY_TIMEOUT_S)
        except TimeoutError:
            return JSONResponse(status_code=503, content={"status": "not_ready", "reason": (
                f"no answer within {READY_TIMEOUT_S:g} s (a model loading, or no replica up yet)")})
        except Exception as exc:  # a replica failing its start (missing key, unknown model) or the store down
            err = raygrade_cause(exc)
            return JSONResponse(status_code=503, content={"status": "not_ready", "reason": (
                err.message if err is not None else type(exc).__name__)})
        self._ready_until = time.monotonic() + READY_CACHE_S
        return JSONResponse(status_code=200, content={"status": "ready"})

    async def _probe_ready(self) -> None:
        """``Batcher.ready`` (store, Grader, model), given up after :data:`READY_PROBE_S`."""
        response = self._batcher.ready.remote()
        try:
            await asyncio.wait_for(response, timeout=READY_PROBE_S)
        except TimeoutError:
            response.cancel()  # explicitly: an abandoned await does not cancel the call in Serve
            raise

