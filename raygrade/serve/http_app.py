"""The FastAPI application every route of raygrade's ingress is registered on: its middleware
(:class:`~raygrade.serve.guard.RequestGuard`), the error handlers that turn raygrade's
exceptions and FastAPI's validation errors into OpenAI-shaped bodies, the OpenAPI document, and
the dependencies routes share (the caller's tenant, path parameters). The routes themselves are
methods of :class:`~raygrade.serve.ingress.RaygradeIngress` and its
:class:`~raygrade.serve.review_routes.ReviewRoutes`.
"""

# No ``from __future__ import annotations``: FastAPI resolves the route annotations at import.
import logging

from fastapi import Depends, FastAPI, Path, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from raygrade.errors import RaygradeError, raygrade_cause
from raygrade.protocol import GradingJob, JobStatus
from raygrade.serve.guard import RequestGuard, error_response
from raygrade.serve.http_errors import validation_error_body

# A child of Serve's logger: lines go to the replica's log file in the app's logging_config
# format (JSON in serve_config.yaml), as Serve documents for deployment code.
logger = logging.getLogger("ray.serve.raygrade.serve.ingress")

class RaygradeAPI(FastAPI):
    """FastAPI with raygrade's OpenAPI document: without the 422 FastAPI adds to every route
    (raygrade answers 400). A method, not a module function: Serve freezes a copy of the app for
    its replicas, and the document must describe the copy's routes."""

    def openapi(self) -> dict:
        if self.openapi_schema is None:
            doc = get_openapi(title=self.title, version=self.version, description=self.description,
                              routes=self.routes)
            for ops in doc.get("paths", {}).values():
                for op in ops.values():
                    op.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                doc.get("components", {}).get("schemas", {}).pop(name, None)
            self.openapi_schema = doc
        return self.openapi_schema


api = RaygradeAPI(title="raygrade", version="0.1.0",
              description="Grade scanned answer pages against questions, reference answers and rubrics.")
api.add_middleware(RequestGuard)
_bearer = HTTPBearer(auto_error=False, description="An API key (`raygrade keys create --tenant NAME`).")


async def tenant_of(request: Request,
                    credentials: HTTPAuthorizationCredentials | None = Security(_bearer)) -> str:
    """The caller's tenant (a FastAPI dependency): what :class:`RequestGuard` found for its key
    before the body was read (``credentials`` only declares the scheme in the OpenAPI document)."""
    return request.state.tenant


Tenant = Depends(tenant_of)

JobId = Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
ItemId = Path(min_length=6, max_length=17, pattern=r"^item_[0-9]+$")


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(status_code=400, content=validation_error_body(list(exc.errors()), exc.body))


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Unknown routes (404) and methods (405) in the same body as every other error."""
    etype = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse(status_code=exc.status_code, headers=getattr(exc, "headers", None), content={"error": {
        "message": f"{request.method} {request.url.path}: {exc.detail}", "type": etype, "param": None, "code": None}})




@api.exception_handler(RaygradeError)
async def _raygrade_error(request: Request, exc: RaygradeError) -> JSONResponse:
    return error_response(exc)


async def _call(response):
    """Await a handle call, unwrapping Ray's error wrapper so RaygradeErrors reach the handler."""
    try:
        return await response
    except Exception as exc:
        if (err := raygrade_cause(exc)) is not None:
            raise err from None
        raise


async def accepted(batcher, status: JobStatus, created: bool, job: GradingJob | None = None) -> JSONResponse:
    """The answer to an accepted job (202; 200 for a replay), after nudging the ``Batcher`` handle
    to start a new one now, with the job as stored when it is given (the batcher then plans it
    without reading it back). The job is already durable: a lost nudge only delays it until the
    batcher's next poll of the store."""
    if created:
        try:
            await batcher.submit.remote(status.id, job, status.tenant)
        except Exception as exc:
            logger.warning("job %s: batcher not reachable (%s); it will pick the job up from the store",
                           status.id, type(exc).__name__, extra={"raygrade_job_id": status.id})
    return JSONResponse(status_code=202 if created else 200, content=status.model_dump(mode="json"))
