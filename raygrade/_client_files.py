"""The clients' Files API (``client.files``): upload page files once, name their pages in jobs.

Example::

    f = client.files.create("class-7b.pdf")          # → FileObject(id="file-…", pages=40, …)
    job = {"assessment": ..., "submissions": [
        {"student_id": "ada", "pages": [{"type": "file", "file_id": f.id, "page": 1},
                                        {"type": "file", "file_id": f.id, "page": 2}]}]}
    client.submit(job)
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO

from pydantic import BaseModel

from raygrade.protocol import FileDeleted, FileList, FileObject, FileSplit

FileInput = str | os.PathLike | bytes | BinaryIO


@contextlib.contextmanager
def _opened(file: FileInput, filename: str | None):
    """``(name, binary file object)`` of a path, bytes or an open binary file (a path is opened
    here and closed after the upload; httpx streams it in chunks)."""
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as fh:
            yield filename or os.path.basename(os.fspath(file)), fh
    elif isinstance(file, bytes):
        yield filename or "upload", io.BytesIO(file)
    else:
        yield filename or os.path.basename(getattr(file, "name", "") or "") or "upload", file


def _body(how: BaseModel | dict[str, Any]) -> dict[str, Any]:
    return how.model_dump(mode="json") if isinstance(how, BaseModel) else how


def _list_params(limit: int, after: str | None) -> dict[str, Any]:
    return {"limit": limit, **({"after": after} if after else {})}


class Files:
    """``client.files`` of :class:`raygrade.client.Client` (OpenAI's ``client.files`` shape)."""

    def __init__(self, call: Callable[..., Any]):
        self._call = call

    def create(self, file: FileInput, *, purpose: str = "pages", filename: str | None = None) -> FileObject:
        """``POST /v1/files``: upload a page file (a path, bytes or an open binary file).

        Raises:
            InvalidRequestError: a format not accepted, an encrypted or corrupt file (400: the message
                names it), or a file over the server's ``api.max_body_bytes`` (``http_status`` 413,
                ``code`` ``request_too_large``).
        """
        with _opened(file, filename) as (name, fh):
            return FileObject.model_validate(self._call("POST", "/v1/files", data={"purpose": purpose},
                                                        files={"file": (name, fh, "application/octet-stream")}))

    def list(self, *, limit: int = 20, after: str | None = None) -> FileList:
        """``GET /v1/files``: a page of this tenant's files, newest first (next: ``after=page.last_id``)."""
        return FileList.model_validate(self._call("GET", "/v1/files", params=_list_params(limit, after)))

    def retrieve(self, file_id: str) -> FileObject:
        """``GET /v1/files/{id}``. Raises :class:`NotFoundError` for an unknown id (or another tenant's)."""
        return FileObject.model_validate(self._call("GET", f"/v1/files/{file_id}"))

    def content(self, file_id: str) -> bytes:
        """``GET /v1/files/{id}/content``: the file's bytes as uploaded."""
        return self._call("GET", f"/v1/files/{file_id}/content", raw=True).content

    def delete(self, file_id: str) -> FileDeleted:
        """``DELETE /v1/files/{id}``: new jobs can no longer name it; accepted jobs keep their pages."""
        return FileDeleted.model_validate(self._call("DELETE", f"/v1/files/{file_id}"))

    def split(self, file_id: str, how: BaseModel | dict[str, Any]) -> FileSplit:
        """``POST /v1/files/{id}/split``: a class's scan split into students (``how``: a
        :class:`~raygrade.protocol.SplitByPageCount`, :class:`~raygrade.protocol.SplitByRoster`,
        :class:`~raygrade.protocol.SplitByCoverSheets` or its JSON); ``.submissions()`` makes the job's.

        Raises:
            InvalidRequestError: a split that does not fit the file (naming the field).
        """
        return FileSplit.model_validate(self._call("POST", f"/v1/files/{file_id}/split", json=_body(how)))


class AsyncFiles:
    """``client.files`` of :class:`raygrade.client.AsyncClient` (same methods as :class:`Files`, awaitable)."""

    def __init__(self, call: Callable[..., Awaitable[Any]]):
        self._call = call

    async def create(self, file: FileInput, *, purpose: str = "pages", filename: str | None = None) -> FileObject:
        """``POST /v1/files`` (see :meth:`Files.create`)."""
        with _opened(file, filename) as (name, fh):
            return FileObject.model_validate(await self._call(
                "POST", "/v1/files", data={"purpose": purpose}, files={"file": (name, fh, "application/octet-stream")}))

    async def list(self, *, limit: int = 20, after: str | None = None) -> FileList:
        """``GET /v1/files`` (see :meth:`Files.list`)."""
        return FileList.model_validate(await self._call("GET", "/v1/files", params=_list_params(limit, after)))

    async def retrieve(self, file_id: str) -> FileObject:
        """``GET /v1/files/{id}`` (see :meth:`Files.retrieve`)."""
        return FileObject.model_validate(await self._call("GET", f"/v1/files/{file_id}"))

    async def content(self, file_id: str) -> bytes:
        """``GET /v1/files/{id}/content`` (see :meth:`Files.content`)."""
        return (await self._call("GET", f"/v1/files/{file_id}/content", raw=True)).content

    async def delete(self, file_id: str) -> FileDeleted:
        """``DELETE /v1/files/{id}`` (see :meth:`Files.delete`)."""
        return FileDeleted.model_validate(await self._call("DELETE", f"/v1/files/{file_id}"))

    async def split(self, file_id: str, how: BaseModel | dict[str, Any]) -> FileSplit:
        """``POST /v1/files/{id}/split`` (see :meth:`Files.split`)."""
        return FileSplit.model_validate(await self._call("POST", f"/v1/files/{file_id}/split", json=_body(how)))
