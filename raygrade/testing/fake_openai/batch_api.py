"""A fake of OpenAI's Batch API (files and batches) for tests, on 127.0.0.1.

It follows https://platform.openai.com/docs/guides/batch and its API reference:

- ``POST /v1/files`` (multipart: ``purpose=batch``, ``file``) checks the JSONL (one
  ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}`` per line, unique
  ``custom_id`` s, at most ``max_requests_per_file`` lines and ``max_file_bytes``); ``GET
  /v1/files`` (``?purpose=``), ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``.
- ``POST /v1/batches`` (``input_file_id``, ``endpoint``, ``completion_window``, ``metadata``),
  ``GET /v1/batches/{id}``, ``GET /v1/batches`` (newest first, ``limit``/``after``), ``POST
  /v1/batches/{id}/cancel``. A batch goes ``validating → in_progress → finalizing →
  completed``, or ``failed`` (validation, or over the enqueued-token limit), ``expired``
  (scripted: ``expire_batches`` holds the 1-based numbers of the batches that run out of
  time after half their requests), ``cancelling → cancelled``.
- Output and error files: one line per request, ``{"id", "custom_id", "response":
  {"status_code", "request_id", "body"}, "error"}``; answers come from the same completion
  logic as the chat fake (:func:`~raygrade.testing.fake_openai.content.completion`). Requests
  not run (expired, cancelled) are error lines with ``error.code`` ``batch_expired`` /
  ``batch_cancelled``. ``error_every`` makes every n-th request a 500 and ``malformed_every``
  an unparseable answer (both by the request's position across the server's life).
- ``log`` records every upload, every batch created and every request run, for audits such as
  "no request was submitted twice".
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from raygrade._optional import import_optional
from raygrade.testing.fake_openai.content import completion, estimate_prompt_tokens
from raygrade.testing.fake_openai.runner import ThreadedApp

if TYPE_CHECKING:
    from aiohttp import web
else:
    web = import_optional("aiohttp.web", "fake", "the fake Batch API")

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


def _error(status: int, message: str, code: str | None = None, param: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                        "code": code}}, status=status)


class FakeBatchAPI(ThreadedApp):
    """The fake, run on its own event loop in a background thread.

    Args:
        api_key: Requests must carry ``Authorization: Bearer <api_key>``.
        validate_s: Seconds a batch stays ``validating``.
        per_request_s: Seconds each request takes while ``in_progress`` (one at a time).
        max_requests_per_file, max_file_bytes: The API's input-file limits.
        max_enqueued_tokens: The model's enqueued-token limit: a batch whose prompt tokens,
            with those of the batches not yet finished, pass it fails validation with
            ``token_limit_exceeded`` (``None``: no limit).
        expire_batches: 1-based numbers of batches that expire after half their requests.
        error_every, malformed_every: Every n-th request run is a 500 / an unparseable answer.
        host, port: Where to listen (port 0: a free one).
    """

    def __init__(self, *, api_key: str = "sk-test", validate_s: float = 0.05, per_request_s: float = 0.0,
                 max_requests_per_file: int = 50_000, max_file_bytes: int = 200 * 1024 * 1024,
                 max_enqueued_tokens: int | None = None, expire_batches: set[int] | None = None,
                 error_every: int = 0, malformed_every: int = 0, host: str = "127.0.0.1", port: int = 0):
        self.api_key, self.validate_s, self.per_request_s = api_key, validate_s, per_request_s
        self.max_requests_per_file, self.max_file_bytes = max_requests_per_file, max_file_bytes
        self.max_enqueued_tokens = max_enqueued_tokens
        self.expire_batches = set(expire_batches or ())
        self.error_every, self.malformed_every = error_every, malformed_every
        self.host, self.port = host, port
        self.files: dict[str, dict[str, Any]] = {}
        self.contents: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.log: dict[str, list[Any]] = {"uploads": [], "batches": [], "requests": []}
        self._ran = 0
        self._lock = threading.Lock()

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024, middlewares=[self._auth])
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files", self._list_files)
        app.router.add_get("/v1/files/{id}", self._get_file)
        app.router.add_get("/v1/files/{id}/content", self._file_content)
        app.router.add_post("/v1/batches", self._create)
        app.router.add_get("/v1/batches", self._list_batches)
        app.router.add_get("/v1/batches/{id}", self._get_batch)
        app.router.add_post("/v1/batches/{id}/cancel", self._cancel)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        return await handler(request)

    # -- files -------------------------------------------------------------------------------
    def _file(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        fid = f"file-{uuid.uuid4().hex[:24]}"
        self.files[fid] = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                           "filename": filename, "purpose": purpose, "status": "processed"}
        self.contents[fid] = data
        return self.files[fid]

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        purpose, upload = form.get("purpose"), form.get("file")
        if purpose != "batch" or not isinstance(upload, web.FileField):
            return _error(400, "purpose must be 'batch' and a file must be given", param="purpose")
        data = upload.file.read()
        if len(data) > self.max_file_bytes:
            return _error(400, f"file is {len(data)} bytes; the limit is {self.max_file_bytes}", param="file")
        ids = []
        for n, line in enumerate(data.decode().splitlines(), 1):
            try:
                req = json.loads(line)
                assert req["method"] == "POST" and req["url"] == "/v1/chat/completions" and req["custom_id"]
                assert isinstance(req["body"]["messages"], list)
            except (ValueError, KeyError, TypeError, AssertionError):
                return _error(400, f"line {n} is not a valid batch request", param="file")
            ids.append(req["custom_id"])
        if len(ids) > self.max_requests_per_file or len(set(ids)) != len(ids) or not ids:
            return _error(400, f"a batch file needs 1-{self.max_requests_per_file} requests with unique "
                          "custom_id values", param="file")
        with self._lock:
            f = self._file(data, upload.filename or "batch.jsonl", "batch")
            self.log["uploads"].append({"file_id": f["id"], "filename": f["filename"], "custom_ids": ids})
        return web.json_response(f)

    async def _list_files(self, request: web.Request) -> web.Response:
        purpose = request.query.get("purpose")
        data = [f for f in self.files.values() if purpose is None or f["purpose"] == purpose]
        return web.json_response({"object": "list", "data": data[::-1], "has_more": False})

    async def _get_file(self, request: web.Request) -> web.Response:
        f = self.files.get(request.match_info["id"])
        return web.json_response(f) if f else _error(404, "No such File object", "not_found")

    async def _file_content(self, request: web.Request) -> web.Response:
        data = self.contents.get(request.match_info["id"])
        return web.Response(body=data, content_type="application/octet-stream") if data is not None else \
            _error(404, "No such File object", "not_found")

    # -- batches -----------------------------------------------------------------------------
    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        fid = body.get("input_file_id")
        if fid not in self.files or self.files[fid]["purpose"] != "batch":
            return _error(400, f"no batch input file {fid!r}", param="input_file_id")
        if body.get("endpoint") != "/v1/chat/completions" or body.get("completion_window") != "24h":
            return _error(400, "endpoint must be /v1/chat/completions and completion_window 24h", param="endpoint")
        now = int(time.time())
        bid = f"batch_{uuid.uuid4().hex[:24]}"
        requests = [json.loads(line) for line in self.contents[fid].decode().splitlines()]
        tokens = sum(estimate_prompt_tokens(r["body"]["messages"]) for r in requests)
        b = {"id": bid, "object": "batch", "endpoint": body["endpoint"], "errors": None, "input_file_id": fid,
             "completion_window": "24h", "status": "validating", "output_file_id": None, "error_file_id": None,
             "created_at": now, "in_progress_at": None, "expires_at": now + 86400, "finalizing_at": None,
             "completed_at": None, "failed_at": None, "expired_at": None, "cancelling_at": None,
             "cancelled_at": None, "request_counts": {"total": len(requests), "completed": 0, "failed": 0},
             "metadata": body.get("metadata")}
        with self._lock:
            self.batches[bid] = b
            self.log["batches"].append({"batch_id": bid, "input_file_id": fid, "tokens": tokens})
            number = len(self.log["batches"])
        asyncio.get_running_loop().create_task(self._run(b, requests, tokens, number in self.expire_batches))
        return web.json_response(b)

    async def _get_batch(self, request: web.Request) -> web.Response:
        b = self.batches.get(request.match_info["id"])
        return web.json_response(b) if b else _error(404, "No such Batch object", "not_found")

    async def _list_batches(self, request: web.Request) -> web.Response:
        items = sorted(self.batches.values(), key=lambda b: b["created_at"], reverse=True)
        ids = [b["id"] for b in items]
        after = request.query.get("after")
        start = ids.index(after) + 1 if after in ids else 0
        limit = int(request.query.get("limit", 20))
        page = items[start:start + limit]
        return web.json_response({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                                  "last_id": page[-1]["id"] if page else None,
                                  "has_more": start + limit < len(items)})

    async def _cancel(self, request: web.Request) -> web.Response:
        b = self.batches.get(request.match_info["id"])
        if b is None:
            return _error(404, "No such Batch object", "not_found")
        if b["status"] in TERMINAL:
            return _error(400, f"cannot cancel a batch that is {b['status']}")
        b["status"], b["cancelling_at"] = "cancelling", int(time.time())
        return web.json_response(b)

    def _enqueued(self, exclude: str) -> int:
        return sum(e["tokens"] for e in self.log["batches"] if e["batch_id"] != exclude
                   and self.batches[e["batch_id"]]["status"] in ("validating", "in_progress", "finalizing"))

    async def _run(self, b: dict[str, Any], requests: list[dict[str, Any]], tokens: int, expire: bool) -> None:
        await asyncio.sleep(self.validate_s)
        if self.max_enqueued_tokens is not None and tokens + self._enqueued(b["id"]) > self.max_enqueued_tokens:
            b["status"], b["failed_at"] = "failed", int(time.time())
            b["errors"] = {"object": "list", "data": [{"code": "token_limit_exceeded", "line": None, "param": None,
                                                       "message": "Enqueued token limit reached."}]}
            return
        if b["status"] == "cancelling":
            b["status"], b["cancelled_at"] = "cancelled", int(time.time())
            return
        b["status"], b["in_progress_at"] = "in_progress", int(time.time())
        out, err = [], []
        for i, req in enumerate(requests):
            stop = "batch_cancelled" if b["status"] == "cancelling" else (
                "batch_expired" if expire and i >= len(requests) // 2 else None)
            if stop:
                err.append({"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": req["custom_id"],
                            "response": None, "error": {"code": stop, "message": "This request was not executed."}})
                continue
            if self.per_request_s:
                await asyncio.sleep(self.per_request_s)
            with self._lock:
                self._ran += 1
                n = self._ran
                self.log["requests"].append(req["custom_id"])
            line = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": req["custom_id"], "error": None}
            if self.error_every and n % self.error_every == 0:
                line["response"] = {"status_code": 500, "request_id": f"req_{n}", "body": {"error": {
                    "message": "The server had an error processing your request.", "type": "server_error",
                    "param": None, "code": None}}}
                err.append(line)
                b["request_counts"]["failed"] += 1
                continue
            fault = "malformed" if self.malformed_every and n % self.malformed_every == 0 else None
            body = completion(req["body"], estimate_prompt_tokens(req["body"]["messages"]), fault=fault)
            line["response"] = {"status_code": 200, "request_id": f"req_{n}", "body": body}
            out.append(line)
            b["request_counts"]["completed"] += 1
        cancelled = b["status"] == "cancelling"  # a cancelled batch ends cancelled, its partial output kept
        if not cancelled:
            b["status"], b["finalizing_at"] = "finalizing", int(time.time())
        await asyncio.sleep(self.validate_s)
        if out:
            b["output_file_id"] = self._file("".join(json.dumps(x) + "\n" for x in out).encode(),
                                             f"{b['id']}_output.jsonl", "batch_output")["id"]
        if err:
            b["error_file_id"] = self._file("".join(json.dumps(x) + "\n" for x in err).encode(),
                                            f"{b['id']}_error.jsonl", "batch_output")["id"]
        now = int(time.time())
        if expire:
            b["status"], b["expired_at"] = "expired", now
        elif cancelled or b["status"] == "cancelling":
            b["status"], b["cancelled_at"] = "cancelled", now
        else:
            b["status"], b["completed_at"] = "completed", now
