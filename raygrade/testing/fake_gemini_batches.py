"""A fake of the Gemini API's batch mode for tests, on 127.0.0.1, beside the fake ``generateContent``.

It follows https://ai.google.dev/gemini-api/docs/batch-mode and the REST reference, in the
shape the official ``google-genai`` SDK reads (the Gemini Developer API):

- ``POST /v1beta/models/{model}:batchGenerateContent`` with ``{"batch": {"displayName",
  "inputConfig": {"requests": {"requests": [{"request", "metadata"}]}}}}`` (inline requests, at
  most ``max_inline_bytes``, 20 MB: else 400 ``INVALID_ARGUMENT``) or ``"inputConfig":
  {"fileName": "files/…"}`` (a JSONL file of ``{"key", "request"}`` lines uploaded through the
  fake Files API, :mod:`raygrade.testing.fake_gemini_files`) answers an operation ``{"name":
  "batches/…", "metadata": GenerateContentBatch}`` whose ``state`` goes ``BATCH_STATE_PENDING →
  RUNNING → SUCCEEDED``, or ``CANCELLED`` / ``EXPIRED`` (``expire_batches``: 1-based numbers of
  jobs that expire after half their requests; an expired or cancelled job returns no output, as
  the fake reads the docs). When it has succeeded, ``metadata.output.inlinedResponses.
  inlinedResponses`` holds one ``{"response" | "error", "metadata"}`` per inline request, in
  request order, ``metadata`` echoed; a file's job writes ``metadata.output.responsesFile``, a
  generated JSONL file of ``{"key", "response" | "error"}`` lines in reverse request order.
- ``GET /v1beta/batches/{id}``, ``GET /v1beta/batches`` (``pageSize``/``pageToken``, answering
  ``{"operations", "nextPageToken"}``), ``POST /v1beta/batches/{id}:cancel``.
- Requests run one at a time (``per_request_s`` each); ``error_every`` makes every n-th request
  run an ``error`` (``google.rpc.Status`` code 13), ``malformed_every`` an answer the schema does
  not allow (by position across the server's life). Usage by the fake's own count.
- ``batch_log`` records every job created (its request keys) and every request run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import uuid
from typing import TYPE_CHECKING, Any

from raygrade._optional import import_optional
from raygrade.testing.fake_gemini import CHARS_PER_TOKEN, FakeGeminiServer, _status
from raygrade.testing.fake_gemini_files import FakeFilesApi, _iso
from raygrade.testing.fake_openai.content import schema_instance

if TYPE_CHECKING:
    from aiohttp import web
else:
    web = import_optional("aiohttp.web", "fake", "the fake Gemini batch mode")

BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"
TERMINAL = frozenset({"BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED", "BATCH_STATE_EXPIRED"})


def _now() -> str:
    return _iso(dt.datetime.now(dt.UTC))


class FakeGeminiBatches(FakeFilesApi, FakeGeminiServer):
    """The fake Gemini API with batch mode (see the module docstring).

    Args:
        per_request_s: Seconds each batch request takes (one at a time per job).
        expire_batches: 1-based numbers of jobs that expire after half their requests.
        error_every, malformed_every: Every n-th request run errors / answers outside the schema.
        max_inline_bytes: The API's limit on a job's inline requests.
        max_file_bytes: The Files API's limit on one file.
        **kwargs: :class:`~raygrade.testing.fake_gemini.FakeGeminiServer`'s.
    """

    def __init__(self, *, per_request_s: float = 0.0, expire_batches: set[int] | None = None, error_every: int = 0,
                 malformed_every: int = 0, max_inline_bytes: int = 20 * 1024 * 1024,
                 max_file_bytes: int = 2 * 1000 * 1000 * 1000, **kwargs: Any):
        FakeGeminiServer.__init__(self, **kwargs)
        FakeFilesApi.__init__(self, max_file_bytes)
        self.per_request_s, self.expire_batches = per_request_s, set(expire_batches or ())
        self.error_every, self.malformed_every = error_every, malformed_every
        self.max_inline_bytes = max_inline_bytes
        self.jobs: dict[str, dict[str, Any]] = {}
        self.batch_log: dict[str, list[Any]] = {"batches": [], "requests": []}
        self._tasks: set[asyncio.Task] = set()
        self._ran = 0

    def make_app(self) -> web.Application:
        app = super().make_app()
        app.router.add_get("/{version}/batches", self._list)
        app.router.add_get("/{version}/batches/{id}", self._get)
        app.router.add_post("/{version}/batches/{call}", self._cancel)
        self.add_file_routes(app)
        return app

    def _refused(self, request: web.Request) -> web.Response | None:
        if (request.headers.get("x-goog-api-key") or request.query.get("key")) != self.api_key:
            return _status(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.")
        return None

    async def _generate(self, request: web.Request) -> web.Response:
        model, _, method = request.match_info["call"].partition(":")
        if method != "batchGenerateContent":
            return await super()._generate(request)
        if (refused := self._refused(request)) is not None:
            return refused
        raw = await request.read()
        if len(raw) > self.max_inline_bytes:
            return _status(400, "INVALID_ARGUMENT", f"Request payload size exceeds the limit: {self.max_inline_bytes}"
                                                    " bytes.")
        try:
            batch = json.loads(raw)["batch"]
            source = batch["inputConfig"]
        except (ValueError, KeyError, TypeError):
            return _status(400, "INVALID_ARGUMENT", "batch.input_config is required")
        if "fileName" in source:
            requests = self._file_requests(source["fileName"])
            if isinstance(requests, web.Response):
                return requests
        else:
            requests = (source.get("requests") or {}).get("requests") or []
        if not requests or not all(isinstance(r, dict) and isinstance(r.get("request"), dict) for r in requests):
            return _status(400, "INVALID_ARGUMENT", "batch.input_config.requests.requests: a non-empty list of "
                                                    "{request, metadata} is required")
        name = f"batches/{uuid.uuid4().hex[:20]}"
        self.jobs[name] = {"name": name, "metadata": {
            "@type": BATCH_TYPE, "model": f"models/{model}", "displayName": batch.get("displayName", ""),
            "state": "BATCH_STATE_PENDING", "createTime": _now(), "updateTime": _now(),
            "batchStats": {"requestCount": str(len(requests)), "pendingRequestCount": str(len(requests))}}}
        self.batch_log["batches"].append({"name": name, "keys": [(r.get("metadata") or {}).get("key")
                                                                 for r in requests],
                                          "input": source.get("fileName", "inline")})
        expire = len(self.batch_log["batches"]) in self.expire_batches
        task = asyncio.get_running_loop().create_task(self._run(name, requests, expire, "fileName" in source))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response(self.jobs[name])

    def _file_requests(self, file_name: str) -> list[dict[str, Any]] | web.Response:
        """An input file's ``{"key", "request"}`` lines as inline ``{"request", "metadata"}`` ones."""
        f = self.files.get(file_name)
        if f is None:
            return _status(400, "INVALID_ARGUMENT", f"File {file_name} not found.")
        out = []
        for n, line in enumerate(f["data"].decode().splitlines(), 1):
            try:
                if line.strip():
                    row = json.loads(line)
                    out.append({"request": dict(row["request"]), "metadata": {"key": row["key"]}})
            except (ValueError, KeyError, TypeError):
                return _status(400, "INVALID_ARGUMENT", f"{file_name} line {n}: a JSON object with \"key\" and "
                                                        "\"request\" is required")
        return out

    def _one(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request's ``{"response"}`` or ``{"error"}``."""
        self._ran += 1
        if not request.get("contents"):
            return {"error": {"code": 3, "message": "contents is not specified"}}
        if self.error_every and self._ran % self.error_every == 0:
            return {"error": {"code": 13, "message": "Internal error encountered."}}
        gen = request.get("generationConfig") or {}
        schema = gen.get("responseJsonSchema") or gen.get("responseSchema")
        text = json.dumps(schema_instance(schema)) if schema else "OK"
        if self.malformed_every and self._ran % self.malformed_every == 0:
            text = '{"grades": ['
        system, rest = self._count(request)
        output = min(int(gen.get("maxOutputTokens") or 8192), math.ceil(len(text) / CHARS_PER_TOKEN))
        return {"response": {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                                             "finishReason": "STOP", "index": 0}],
                             "usageMetadata": {"promptTokenCount": system + rest, "candidatesTokenCount": output,
                                               "totalTokenCount": system + rest + output}}}

    async def _run(self, name: str, requests: list[dict[str, Any]], expire: bool, to_file: bool = False) -> None:
        job, out = self.jobs[name], []
        meta = job["metadata"]
        meta.update(state="BATCH_STATE_RUNNING", updateTime=_now())
        for i, r in enumerate(requests):
            if meta["state"] == "BATCH_STATE_CANCELLED":
                return
            if expire and i >= len(requests) // 2:
                meta.update(state="BATCH_STATE_EXPIRED", updateTime=_now(), endTime=_now())
                job["done"] = True
                return
            if self.per_request_s:
                await asyncio.sleep(self.per_request_s)
                if meta["state"] == "BATCH_STATE_CANCELLED":
                    return
            out.append({**self._one(r["request"]), **({"metadata": r["metadata"]} if "metadata" in r else {})})
            self.batch_log["requests"].append((r.get("metadata") or {}).get("key"))
        output: dict[str, Any] = {"@type": OUTPUT_TYPE, "inlinedResponses": {"inlinedResponses": out}}
        if to_file:
            lines = [{"key": o.get("metadata", {}).get("key"), **{k: v for k, v in o.items() if k != "metadata"}}
                     for o in reversed(out)]
            output = {"@type": OUTPUT_TYPE, "responsesFile": self.store_file(
                "".join(json.dumps(x) + "\n" for x in lines).encode(), generated=True,
                display_name=f"{name} responses")["name"]}
        meta.update(state="BATCH_STATE_SUCCEEDED", updateTime=_now(), endTime=_now(), output=output,
                    batchStats={"requestCount": str(len(requests)),
                                "successfulRequestCount": str(sum("response" in o for o in out)),
                                "failedRequestCount": str(sum("error" in o for o in out))})
        job.update(done=True, response=output)

    def _found(self, request: web.Request, job_id: str) -> dict[str, Any] | web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        job = self.jobs.get(f"batches/{job_id}")
        return job if job is not None else _status(404, "NOT_FOUND", f"batch batches/{job_id} not found")

    async def _get(self, request: web.Request) -> web.Response:
        job = self._found(request, request.match_info["id"])
        return job if isinstance(job, web.Response) else web.json_response(job)

    async def _cancel(self, request: web.Request) -> web.Response:
        job_id, _, method = request.match_info["call"].partition(":")
        if method != "cancel":
            return _status(404, "NOT_FOUND", f"method {method!r} not found")
        job = self._found(request, job_id)
        if isinstance(job, web.Response):
            return job
        if job["metadata"]["state"] not in TERMINAL:
            job["metadata"].update(state="BATCH_STATE_CANCELLED", updateTime=_now(), endTime=_now())
            job["done"] = True
        return web.json_response({})

    async def _list(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        size = max(1, min(1000, int(request.query.get("pageSize", "50"))))
        start = int(request.query.get("pageToken") or 0)
        names = list(self.jobs)[::-1][start:start + size + 1]
        body: dict[str, Any] = {"operations": [self.jobs[n] for n in names[:size]]}
        if len(names) > size:
            body["nextPageToken"] = str(start + size)
        return web.json_response(body)
