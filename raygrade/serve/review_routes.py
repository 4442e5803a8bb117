"""The review routes of the ingress (:class:`ReviewRoutes`, a base of
:class:`~raygrade.serve.ingress.RaygradeIngress`): the review queue, a teacher's review, the pages
a reviewer reads, regrades, and the review page (:mod:`raygrade.web`). See :mod:`raygrade.store.reviews`.
"""

# No ``from __future__ import annotations``: FastAPI resolves the route annotations at import.
from typing import Any, Literal

from fastapi import Path, Query, Request
from fastapi.responses import JSONResponse, Response

from raygrade.answer_groups import DEFAULT_THRESHOLD
from raygrade.errors import NotFoundError
from raygrade.protocol import AnswerGroupList, JobStatus, ReviewItem, ReviewList, ReviewRequest
from raygrade.serve.http_app import ItemId, JobId, Tenant, _call, accepted, api
from raygrade.serve.http_errors import error_responses as _errors
from raygrade.web import ASSETS, SECURITY_HEADERS, asset

QuestionId = Path(min_length=1, max_length=128)
GroupId = Path(min_length=7, max_length=18, pattern=r"^group_[0-9]+$")
Threshold = Query(default=DEFAULT_THRESHOLD, gt=0, le=2, description=(
    "Cosine distance under which answers share a group (larger: fewer, wider groups)."))


class ReviewRoutes:
    """Routes on ``self._registry`` (``JobRegistry``) and ``self._batcher`` (``Batcher``) handles,
    which :class:`~raygrade.serve.ingress.RaygradeIngress` sets."""

    _registry: Any
    _batcher: Any

    @api.get("/v1/reviews", response_model=ReviewList, responses=_errors(404))
    async def list_reviews(self, job_id: str | None = Query(default=None, min_length=1, max_length=64,
                                                            pattern=r"^[A-Za-z0-9_-]+$"),
                           question_id: str | None = Query(default=None, min_length=1, max_length=128),
                           status: Literal["pending", "done"] | None = Query(default=None),
                           limit: int = Query(default=50, ge=1, le=200),
                           after: str | None = Query(default=None, min_length=1, max_length=100),
                           tenant: str = Tenant) -> ReviewList:
        """The caller's review queue: items flagged for review (``pending``) and items reviewed
        (``done``), in job and item order; the next page is ``after=last_id``."""
        data, more = await _call(self._registry.review_queue.remote(tenant, job_id, question_id, status, limit,
                                                                    after))
        return ReviewList(data=data, has_more=more, first_id=f"{data[0].job_id}/{data[0].id}" if data else None,
                          last_id=f"{data[-1].job_id}/{data[-1].id}" if data else None)

    @api.post("/v1/jobs/{job_id}/items/{item_id}/review", response_model=ReviewItem, responses=_errors(404, 409))
    async def review_item(self, request: Request, review: ReviewRequest, job_id: str = JobId,
                          item_id: str = ItemId, tenant: str = Tenant) -> ReviewItem:
        """A teacher's score for one graded item, on its question's grid (400 off it; 409 for an
        item not graded). Idempotent: the same review again changes nothing; a different one
        replaces it, and every review stays in the audit trail with its time and key id."""
        key_hash = getattr(request.state, "key_hash", None)
        return await _call(self._registry.review_item.remote(job_id, item_id, review, tenant, key_hash))

    @api.post("/v1/jobs/{job_id}/regrade", status_code=202, response_model=JobStatus, responses={
        200: {"model": JobStatus, "description": "The same reviews asked again: the existing regrade job."},
        **_errors(404, 409, 429)})
    async def regrade(self, job_id: str = JobId,
                      question_id: str = Query(min_length=1, max_length=128, description="The question to regrade."),
                      tenant: str = Tenant) -> JSONResponse:
        """Regrade a question's unreviewed items with its reviewed answers as graded examples: a new
        job (``regrade_of``) whose grades replace the model's in this job when it ends; the review
        flags are then recomputed. 409 while this job runs, or with no review to learn from."""
        status, created = await _call(self._registry.regrade.remote(job_id, question_id, tenant))
        return await accepted(self._batcher, status, created)

    @api.get("/v1/jobs/{job_id}/items/{item_id}/pages/{page}", response_class=Response, responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}, "text/plain": {}},
              "description": "The page as uploaded: an image, or a text page as UTF-8 text."},
        **_errors(404)})
    async def item_page(self, job_id: str = JobId, item_id: str = ItemId, page: int = Path(ge=0, le=100_000),
                        tenant: str = Tenant) -> Response:
        """Page ``page`` (0-based) of the student an item belongs to, for a reviewer."""
        data, media_type = await _call(self._registry.item_page.remote(job_id, item_id, page, tenant))
        return Response(content=data, media_type=media_type, headers={
            "Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'"})

    @api.get("/v1/jobs/{job_id}/questions/{question_id}/groups", response_model=AnswerGroupList,
             responses=_errors(404, 501))
    async def list_groups(self, job_id: str = JobId, question_id: str = QuestionId, threshold: float = Threshold,
                          tenant: str = Tenant) -> AnswerGroupList:
        """The question's graded answers in groups of answers that say much the same thing
        (embeddings, agglomerative clustering cut at ``threshold``), for a teacher to score at once."""
        data = await _call(self._registry.answer_groups.remote(job_id, question_id, tenant, threshold))
        return AnswerGroupList(data=data, threshold=threshold)

    @api.post("/v1/jobs/{job_id}/questions/{question_id}/groups/{group_id}/review", response_model=ReviewList,
              responses=_errors(404, 409, 501))
    async def review_group(self, request: Request, review: ReviewRequest, job_id: str = JobId,
                           question_id: str = QuestionId, group_id: str = GroupId, threshold: float = Threshold,
                           tenant: str = Tenant) -> ReviewList:
        """One score for every member of a group not reviewed yet (a member a teacher reviewed
        keeps its review); the members as reviewed. ``threshold`` must be the listing's."""
        key_hash = getattr(request.state, "key_hash", None)
        data = await _call(self._registry.review_group.remote(job_id, question_id, group_id, review, tenant,
                                                              key_hash, threshold))
        return ReviewList(data=data, first_id=f"{job_id}/{data[0].id}" if data else None,
                          last_id=f"{job_id}/{data[-1].id}" if data else None)

    @api.get("/review", include_in_schema=False)
    async def review_page(self) -> Response:
        """The review page (:mod:`raygrade.web`): public, static; its script calls the API with a key."""
        return Response(content=asset("review.html"), media_type=ASSETS["review.html"],
                        headers=SECURITY_HEADERS)

    @api.get("/review/{name}", include_in_schema=False)
    async def review_asset(self, name: str) -> Response:
        """The review page's script and style sheet (any other name: 404)."""
        if name == "review.html" or name not in ASSETS:
            raise NotFoundError(f"no file {name!r} in the review page", param="name")
        return Response(content=asset(name), media_type=ASSETS[name], headers=SECURITY_HEADERS)
