"""A fake of the Gemini Files API for tests, as the fake batch mode uses it (input and output files).

It follows the REST reference (``media.upload``, ``files.get``, ``files.download``) in the shape
the official ``google-genai`` SDK speaks:

- ``POST /upload/{version}/files`` with ``X-Goog-Upload-Protocol: resumable`` and
  ``X-Goog-Upload-Command: start`` (the size in ``X-Goog-Upload-Header-Content-Length``, at most
  ``max_file_bytes``, 2 GB; the body ``{"file": {displayName, mimeType}}``) answers an
  ``X-Goog-Upload-URL``; chunks ``POST`` to it with ``X-Goog-Upload-Command: upload`` (``,
  finalize`` on the last) at the right ``X-Goog-Upload-Offset`` (else 400); the final one answers
  ``X-Goog-Upload-Status: final`` and ``{"file": File}``.
- ``GET /{version}/files/{id}`` answers the ``File``; ``GET …/files/{id}:download?alt=media`` its
  bytes, for generated files only (an uploaded file cannot be downloaded, as the API says).
- Files expire after 48 hours (``expirationTime``); :meth:`FakeFilesApi.delete_file` drops one
  early, as that expiry would.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import uuid
from typing import TYPE_CHECKING, Any

from raygrade._optional import import_optional
from raygrade.testing.fake_gemini import _status

if TYPE_CHECKING:
    from aiohttp import web
else:
    web = import_optional("aiohttp.web", "fake", "the fake Gemini Files API")

FILE_TTL = dt.timedelta(hours=48)


def _iso(t: dt.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


class FakeFilesApi:
    """Files API routes and storage for a fake Gemini server (a mixin: the server gives
    ``_refused(request)``, its key check).

    Args:
        max_file_bytes: The API's limit on one file.
    """

    def __init__(self, max_file_bytes: int = 2 * 1000 * 1000 * 1000):
        self.max_file_bytes = max_file_bytes
        self.files: dict[str, dict[str, Any]] = {}  # name -> {"meta": File, "data": bytes}
        self._uploads: dict[str, dict[str, Any]] = {}

    def add_file_routes(self, app: web.Application) -> None:
        """Add the Files API's routes to ``app``."""
        app.router.add_post("/upload/{version}/files", self._upload)
        app.router.add_get("/{version}/files/{call}", self._file)
        app.router.add_get("/download/{version}/files/{call}", self._file)

    def _refused(self, request: web.Request) -> web.Response | None:  # pragma: no cover - the server's
        raise NotImplementedError

    def store_file(self, data: bytes, *, display_name: str = "", mime_type: str = "application/jsonl",
                   generated: bool = False, name: str | None = None) -> dict[str, Any]:
        """Keep ``data`` as a file (an upload, or one the API generated); returns its ``File``."""
        now = dt.datetime.now(dt.UTC)
        name = name or f"files/{'batch-' if generated else ''}{uuid.uuid4().hex[:12]}"
        meta = {"name": name, "displayName": display_name, "mimeType": mime_type, "sizeBytes": str(len(data)),
                "createTime": _iso(now), "updateTime": _iso(now), "expirationTime": _iso(now + FILE_TTL),
                "sha256Hash": base64.b64encode(hashlib.sha256(data).digest()).decode(), "state": "ACTIVE",
                "source": "GENERATED" if generated else "UPLOADED"}
        self.files[name] = {"meta": meta, "data": data}
        return meta

    def delete_file(self, name: str) -> None:
        """Drop a file (as its expiry would)."""
        self.files.pop(name, None)

    async def _upload(self, request: web.Request) -> web.Response:
        if "upload_id" in request.query:
            return await self._chunk(request)
        if (refused := self._refused(request)) is not None:
            return refused
        h = request.headers
        if h.get("X-Goog-Upload-Protocol") != "resumable" or h.get("X-Goog-Upload-Command") != "start":
            return _status(400, "INVALID_ARGUMENT", "a resumable upload starts with X-Goog-Upload-Command: start")
        try:
            size = int(h["X-Goog-Upload-Header-Content-Length"])
            file = (await request.json() or {}).get("file") or {}
        except (KeyError, ValueError, AttributeError):
            return _status(400, "INVALID_ARGUMENT", "X-Goog-Upload-Header-Content-Length and a JSON body are required")
        if size > self.max_file_bytes:
            return _status(400, "INVALID_ARGUMENT", f"File size {size} exceeds the limit of {self.max_file_bytes} "
                                                    "bytes.")
        uid = uuid.uuid4().hex
        self._uploads[uid] = {"size": size, "file": file, "data": bytearray(),
                              "mime": h.get("X-Goog-Upload-Header-Content-Type") or file.get("mimeType") or ""}
        url = request.url.with_query({"upload_id": uid, "upload_protocol": "resumable"})
        return web.Response(headers={"X-Goog-Upload-URL": str(url), "X-Goog-Upload-Status": "active"})

    async def _chunk(self, request: web.Request) -> web.Response:
        up = self._uploads.get(request.query["upload_id"])
        if up is None:
            return _status(404, "NOT_FOUND", "upload not found")
        command = {c.strip() for c in request.headers.get("X-Goog-Upload-Command", "").split(",")}
        if "upload" not in command or request.headers.get("X-Goog-Upload-Offset") != str(len(up["data"])):
            return _status(400, "INVALID_ARGUMENT", f"expected an upload at offset {len(up['data'])}")
        up["data"] += await request.read()
        if "finalize" not in command:
            return web.Response(headers={"X-Goog-Upload-Status": "active"})
        del self._uploads[request.query["upload_id"]]
        if len(up["data"]) != up["size"]:
            return _status(400, "INVALID_ARGUMENT", f"uploaded {len(up['data'])} bytes of {up['size']}")
        meta = self.store_file(bytes(up["data"]), display_name=up["file"].get("displayName", ""),
                               mime_type=up["mime"], name=up["file"].get("name"))
        return web.json_response({"file": meta}, headers={"X-Goog-Upload-Status": "final"})

    async def _file(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        fid, _, method = request.match_info["call"].partition(":")
        f = self.files.get(f"files/{fid}")
        if f is None:
            return _status(403 if method else 404, "PERMISSION_DENIED" if method else "NOT_FOUND",
                           f"File files/{fid} not found or you do not have permission to access it.")
        if method == "download":
            if f["meta"]["source"] != "GENERATED":
                return _status(400, "INVALID_ARGUMENT", "Only generated files can be downloaded.")
            return web.Response(body=f["data"], content_type="application/octet-stream")
        if method:
            return _status(404, "NOT_FOUND", f"method {method!r} not found")
        return web.json_response(f["meta"])
