"""The Files API's objects (OpenAI's shapes): an uploaded page file, a page of them, a deletion."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from raygrade.protocol._base import _Model


class FileObject(_Model):
    """An uploaded file (``POST /v1/files``, ``GET /v1/files/{id}``): OpenAI's file object with
    the number of page images raygrade split it into.

    A job's page ``{"type": "file", "file_id": id, "page": k}`` names its page ``k`` (1-based),
    or every page without ``page`` (:class:`raygrade.protocol.pages.FilePage`).
    """

    id: str = Field(description="`file-` and 24 hexadecimal digits.")
    object: Literal["file"] = "file"
    bytes: int = Field(ge=0, description="Size of the file as uploaded, in bytes.")
    created_at: int = Field(description="Unix seconds.")
    filename: str
    purpose: Literal["pages"] = "pages"
    media_type: str = Field(description="What the file is, from its first bytes (e.g. `application/pdf`).")
    pages: int = Field(ge=1, description="Page images the file holds (a PDF's or TIFF's pages; 1 for an image).")


class FileList(_Model):
    """The body of ``GET /v1/files``: a page of the caller's files, newest first (next page:
    ``?after=last_id`` while ``has_more``)."""

    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class FileDeleted(_Model):
    """The body of ``DELETE /v1/files/{id}``. Jobs accepted before keep their pages."""

    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
