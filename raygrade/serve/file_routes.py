"""The Files API routes of the ingress (:class:`FileRoutes`, a base of
:class:`~raygrade.serve.ingress.RaygradeIngress`), in OpenAI's shape: upload a page file once
(``multipart/form-data``, streamed to a temporary file and then to the blob store), name its pages
in any number of jobs (:class:`raygrade.protocol.FilePage`), list, read and delete it. See
:mod:`raygrade.uploads` and :mod:`raygrade.store.files`.
"""

# No ``from __future__ import annotations``: FastAPI resolves the route annotations at import.
import asyncio
from typing import Any, Literal

from fastapi import File, Form, Path, Query, UploadFile
from fastapi.responses import Response

from raygrade.errors import StorageError
from raygrade.protocol import FileDeleted, FileList, FileObject, FileSplit, SplitRequest
from raygrade.scans import ACCEPTED
from raygrade.serve.http_app import Tenant, _call, api
from raygrade.serve.http_errors import error_responses as _errors
from raygrade.sheets import split
from raygrade.tracing import span
from raygrade.uploads import clean_filename, ingest

FileId = Path(min_length=6, max_length=64, pattern=r"^file-[A-Za-z0-9]+$")


class FileRoutes:
    """Routes on ``self._registry`` (``JobRegistry``) and ``self._blobs`` (the blob store), which
    :class:`~raygrade.serve.ingress.RaygradeIngress` sets."""

    _registry: Any
    _blobs: Any
    _config: Any  # ApiConfig

    def _blob_store(self):
        if self._blobs is None:
            raise StorageError("this application keeps no files (no job store configured)", param="file")
        return self._blobs

    @api.post("/v1/files", response_model=FileObject, responses=_errors(408, 413))
    async def upload_file(self, file: UploadFile = File(description=f"A page file: {ACCEPTED}."),
                          purpose: Literal["pages"] = Form(description="What the file is for: `pages`."),
                          tenant: str = Tenant) -> FileObject:
        """Upload a page file (a student's or a class's PDF, a TIFF, photos): it is split into page
        images and checked now (400 naming the file if it cannot be), so a job that names its pages
        is accepted without decoding anything. The body's size is bounded by ``api.max_body_bytes``,
        and the tenant's stored files by its ``file_bytes`` quota (429 before anything is stored)."""
        blobs = self._blob_store()
        name = clean_filename(file.filename)
        if file.size is not None:  # received (spooled) already: refuse it before it is split and stored
            await _call(self._registry.check_file_quota.remote(tenant, file.size))
        with span("raygrade.upload") as s:
            sha256, size, media_type, pages = await asyncio.to_thread(ingest, file.file, blobs, name, tenant,
                                                                      self._config.max_request_pixels)
            s.set_attributes({"raygrade.tenant": tenant, "raygrade.file.bytes": size,
                              "raygrade.file.pages": len(pages)})
            return await _call(self._registry.create_file.remote(tenant, name, size, sha256, media_type, pages))

    @api.get("/v1/files", response_model=FileList, responses=_errors(404))
    async def list_files(self, limit: int = Query(default=20, ge=1, le=100),
                         after: str | None = Query(default=None, min_length=6, max_length=64),
                         tenant: str = Tenant) -> FileList:
        """The caller's files, newest first; ``after`` = the previous page's ``last_id`` (404 if unknown)."""
        data, more = await _call(self._registry.list_files.remote(tenant, limit, after))
        return FileList(data=data, has_more=more, first_id=data[0].id if data else None,
                        last_id=data[-1].id if data else None)

    @api.get("/v1/files/{file_id}", response_model=FileObject, responses=_errors(404))
    async def get_file(self, file_id: str = FileId, tenant: str = Tenant) -> FileObject:
        return await _call(self._registry.get_file.remote(file_id, tenant))

    @api.get("/v1/files/{file_id}/content", response_class=Response, responses={
        200: {"content": {"application/pdf": {}, "image/png": {}, "image/jpeg": {}, "image/tiff": {},
                          "image/webp": {}, "image/heif": {}}, "description": "The file as uploaded."},
        **_errors(404)})
    async def file_content(self, file_id: str = FileId, tenant: str = Tenant) -> Response:
        """The file's bytes as uploaded (checked against their SHA-256)."""
        key, media_type, name = await _call(self._registry.file_content.remote(file_id, tenant))
        data = await asyncio.to_thread(self._blob_store().get, key)
        ascii_name = name.encode("ascii", "replace").decode().replace('"', "'")
        return Response(content=data, media_type=media_type, headers={
            "Content-Disposition": f'attachment; filename="{ascii_name}"', "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'", "Cache-Control": "private, max-age=3600"})

    @api.post("/v1/files/{file_id}/split", response_model=FileSplit, responses=_errors(404))
    async def split_file(self, how: SplitRequest, file_id: str = FileId, tenant: str = Tenant) -> FileSplit:
        """Split a class's scan into students, before grading: by a fixed number of pages each
        (``pages``), by a roster of page ranges (``roster``), or by the QR cover sheets in front of
        each student's pages (``cover_sheets``; ``raygrade sheets make`` prints them). The answer
        lists each student's pages and what could not be assigned; ``FileSplit.submissions()``
        (or each student's pages as ``{"type": "file", "file_id", "page"}``) makes the job."""
        refs = await _call(self._registry.file_pages.remote(file_id, tenant))
        blobs = self._blob_store()
        with span("raygrade.split", {"raygrade.file.pages": len(refs), "raygrade.split.method": how.method}):
            return await asyncio.to_thread(split, file_id, len(refs), how, lambda k: blobs.get(refs[k].sha256), tenant)

    @api.delete("/v1/files/{file_id}", response_model=FileDeleted, responses=_errors(404))
    async def delete_file(self, file_id: str = FileId, tenant: str = Tenant) -> FileDeleted:
        """Delete the file: jobs can no longer name it; jobs accepted before keep their pages."""
        return await _call(self._registry.delete_file.remote(file_id, tenant))
