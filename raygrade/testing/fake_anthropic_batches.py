"""A fake of Anthropic's Message Batches API for tests, on 127.0.0.1, beside the fake Messages API.

It follows https://docs.anthropic.com/en/docs/build-with-claude/batch-processing and the API
reference:

- ``POST /v1/messages/batches`` (``{"requests": [{"custom_id", "params"}]}``): at most
  ``max_requests`` (100,000) requests and ``max_bytes`` (256 MB); ``custom_id`` s unique within
  the batch and of 1–64 characters from ``[A-Za-z0-9_-]`` (else 400 ``invalid_request_error``).
  ``params`` are validated as the batch runs: an invalid one is an ``errored`` result.
- ``GET /v1/messages/batches/{id}``, ``GET /v1/messages/batches`` (newest first, ``limit``,
  ``after_id``/``before_id``, ``has_more``/``first_id``/``last_id``), ``POST
  /v1/messages/batches/{id}/cancel`` (``canceling``, then ``ended`` with the requests not yet
  run ``canceled``), ``GET /v1/messages/batches/{id}/results`` (JSONL by ``custom_id``, not in
  request order: the fake reverses it) once ``processing_status`` is ``ended``.
- A batch is ``in_progress`` while its requests run one at a time (``per_request_s`` each);
  ``request_counts`` stay ``processing`` until it ends, as the real API's do. Answers come from
  the Messages fake's logic (:func:`~raygrade.testing.fake_anthropic.answer`); usage counts the
  whole prompt as uncached input (the real API's cache hits in batches are best-effort).
  Scripted faults: ``expire_batches`` (1-based numbers of batches whose second half
  ``expired``), ``error_every`` (every n-th request run is ``errored`` with ``api_error``),
  ``malformed_every`` (an answer the schema does not allow), by position across the server's life.
- ``batch_log`` records every batch created (its ``custom_id`` s) and every request run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import uuid
from typing import TYPE_CHECKING, Any

from raygrade._optional import import_optional
from raygrade.testing.fake_anthropic import (
    FakeAnthropicServer,
    answer,
    auth_error,
    error_response,
    text_tokens,
)

if TYPE_CHECKING:
    from aiohttp import web
else:
    web = import_optional("aiohttp.web", "fake", "the fake Message Batches API")

CUSTOM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.isoformat().replace("+00:00", "Z")


class FakeMessageBatches(FakeAnthropicServer):
    """The fake Messages API with Message Batches (see the module docstring).

    Args:
        per_request_s: Seconds each batch request takes (one at a time per batch).
        expire_batches: 1-based numbers of batches whose second half of requests expires.
        error_every, malformed_every: Every n-th request run errors / answers outside the schema.
        max_requests, max_bytes: The API's limits per batch.
        **kwargs: :class:`~raygrade.testing.fake_anthropic.FakeAnthropicServer`'s.
    """

    def __init__(self, *, per_request_s: float = 0.0, expire_batches: set[int] | None = None, error_every: int = 0,
                 malformed_every: int = 0, max_requests: int = 100_000, max_bytes: int = 256 * 1024 * 1024,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.per_request_s, self.expire_batches = per_request_s, set(expire_batches or ())
        self.error_every, self.malformed_every = error_every, malformed_every
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.batches: dict[str, dict[str, Any]] = {}
        self.batch_log: dict[str, list[Any]] = {"batches": [], "requests": []}
        self._results: dict[str, list[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._ran = 0

    def make_app(self) -> web.Application:
        self.client_max_size = self.max_bytes + 1024 * 1024  # the limit is checked in _create, with its error
        app = super().make_app()
        app.router.add_post("/v1/messages/batches", self._create)
        app.router.add_get("/v1/messages/batches", self._list)
        app.router.add_get("/v1/messages/batches/{id}", self._get)
        app.router.add_post("/v1/messages/batches/{id}/cancel", self._cancel)
        app.router.add_get("/v1/messages/batches/{id}/results", self._results_file)
        return app

    def _public(self, b: dict[str, Any]) -> dict[str, Any]:
        return {k: (_iso(v) if isinstance(v, dt.datetime) else v) for k, v in b.items() if not k.startswith("_")}

    async def _create(self, request: web.Request) -> web.Response:
        if (refused := auth_error(request, self.api_key)) is not None:
            return refused
        raw = await request.read()
        if len(raw) > self.max_bytes:
            return error_response(413, "request_too_large", f"batch is {len(raw)} bytes; the limit is {self.max_bytes}")
        try:
            body = json.loads(raw)
            requests = body["requests"]
            assert isinstance(requests, list) and requests
        except (ValueError, KeyError, TypeError, AssertionError):
            return error_response(400, "invalid_request_error", "requests: a non-empty list is required")
        if len(requests) > self.max_requests:
            return error_response(400, "invalid_request_error",
                                  f"requests: at most {self.max_requests} per batch, got {len(requests)}")
        seen: set[str] = set()
        for i, r in enumerate(requests):
            cid = r.get("custom_id") if isinstance(r, dict) else None
            if not isinstance(cid, str) or not CUSTOM_ID.fullmatch(cid):
                return error_response(400, "invalid_request_error",
                                      f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
            if cid in seen:
                return error_response(400, "invalid_request_error", f"requests.{i}.custom_id: duplicate {cid!r}")
            seen.add(cid)
        now = dt.datetime.now(dt.UTC)
        bid = f"msgbatch_{uuid.uuid4().hex[:24]}"
        number = len(self.batch_log["batches"]) + 1
        self.batches[bid] = {
            "id": bid, "type": "message_batch", "processing_status": "in_progress",
            "request_counts": {"processing": len(requests), "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
            "ended_at": None, "created_at": now, "expires_at": now + dt.timedelta(hours=24), "archived_at": None,
            "cancel_initiated_at": None, "results_url": None}
        self.batch_log["batches"].append({"id": bid, "custom_ids": [r["custom_id"] for r in requests]})
        task = asyncio.get_running_loop().create_task(self._run(bid, requests, number in self.expire_batches,
                                                                f"{self.base_url}/v1/messages/batches/{bid}/results"))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response(self._public(self.batches[bid]))

    def _one(self, params: Any) -> dict[str, Any]:
        """One request's result (``succeeded`` or ``errored``)."""
        self._ran += 1
        if not isinstance(params, dict) or not params.get("messages") or not isinstance(params.get("max_tokens"), int):
            return {"type": "errored", "error": {"type": "error", "error": {
                "type": "invalid_request_error", "message": "params: model, messages and max_tokens are required"}}}
        if self.error_every and self._ran % self.error_every == 0:
            return {"type": "errored", "error": {"type": "error", "error": {"type": "api_error",
                                                                            "message": "Internal server error"}}}
        fault = "malformed" if self.malformed_every and self._ran % self.malformed_every == 0 else None
        content, stop = answer(params, fault)
        prefix, rest = self._count(params)
        output = min(params["max_tokens"], text_tokens(json.dumps(content)))
        return {"type": "succeeded", "message": {
            "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": params.get("model"),
            "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": prefix + rest, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                      "output_tokens": output}}}

    async def _run(self, bid: str, requests: list[dict[str, Any]], expire: bool, results_url: str) -> None:
        b, out = self.batches[bid], []
        for i, r in enumerate(requests):
            if b["processing_status"] == "canceling":
                result: dict[str, Any] = {"type": "canceled"}
            elif expire and i >= len(requests) // 2:
                result = {"type": "expired"}
            else:
                if self.per_request_s:
                    await asyncio.sleep(self.per_request_s)
                if b["processing_status"] == "canceling":
                    result = {"type": "canceled"}
                else:
                    result = self._one(r.get("params"))
                    self.batch_log["requests"].append(r["custom_id"])
            out.append({"custom_id": r["custom_id"], "result": result})
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        for line in out:
            counts[line["result"]["type"]] += 1
        self._results[bid] = out[::-1]  # not in request order, as the API warns
        b.update(processing_status="ended", request_counts=counts, ended_at=dt.datetime.now(dt.UTC),
                 results_url=results_url)

    def _found(self, request: web.Request) -> dict[str, Any] | web.Response:
        if (refused := auth_error(request, self.api_key)) is not None:
            return refused
        b = self.batches.get(request.match_info["id"])
        if b is None:
            return error_response(404, "not_found_error", f"message batch {request.match_info['id']!r} not found")
        return b

    async def _get(self, request: web.Request) -> web.Response:
        b = self._found(request)
        return b if isinstance(b, web.Response) else web.json_response(self._public(b))

    async def _cancel(self, request: web.Request) -> web.Response:
        b = self._found(request)
        if isinstance(b, web.Response):
            return b
        if b["processing_status"] == "in_progress":
            b.update(processing_status="canceling", cancel_initiated_at=dt.datetime.now(dt.UTC))
        return web.json_response(self._public(b))

    async def _results_file(self, request: web.Request) -> web.Response:
        b = self._found(request)
        if isinstance(b, web.Response):
            return b
        if b["processing_status"] != "ended":
            return error_response(400, "invalid_request_error", "the batch has not ended: no results yet")
        data = "".join(json.dumps(line) + "\n" for line in self._results[b["id"]])
        return web.Response(body=data.encode(), content_type="application/binary")

    async def _list(self, request: web.Request) -> web.Response:
        if (refused := auth_error(request, self.api_key)) is not None:
            return refused
        limit = max(1, min(1000, int(request.query.get("limit", "20"))))
        ids = list(self.batches)[::-1]  # newest first
        if (after := request.query.get("after_id")) in self.batches:
            ids = ids[ids.index(after) + 1:]
        if (before := request.query.get("before_id")) in self.batches:
            ids = ids[:ids.index(before)]
        page = ids[:limit]
        return web.json_response({"data": [self._public(self.batches[i]) for i in page],
                                  "has_more": len(ids) > limit, "first_id": page[0] if page else None,
                                  "last_id": page[-1] if page else None})
