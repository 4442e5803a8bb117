"""Pages of a submission: inline images, pages of uploaded files, stored image references, typed text."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

from pydantic import Field, field_validator

from raygrade.protocol._base import _Input
from raygrade.scans import ACCEPTED, is_page_file, sniff

#: Largest decoded page image accepted, in bytes.
MAX_IMAGE_BYTES = 20 * 1024 * 1024





def media_type_of(data: bytes) -> str:
    """The media type of a page file from its magic bytes (its first 16 suffice): ``image/png``,
    ``image/jpeg``, ``image/webp``, ``image/tiff``, ``image/heif`` or ``application/pdf``;
    ``application/octet-stream`` for anything else."""
    kind = sniff(data)
    return {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "tiff": "image/tiff",
            "heif": "image/heif", "pdf": "application/pdf"}.get(kind or "", "application/octet-stream")


class ImagePage(_Input):
    """One page file, base64-encoded (no ``data:`` prefix): a PNG or JPEG page image, or a file
    that the server splits into page images when it accepts the job (:mod:`raygrade.scans`: a
    PDF or multi-page TIFF becomes one page per page, HEIC and WebP are converted, a phone JPEG
    turned upright)."""

    type: Literal["image"] = "image"
    data: str = Field(description=f"Base64 bytes of a page file: {ACCEPTED}.", repr=False)

    @field_validator("data")
    @classmethod
    def _check_image(cls, v: str) -> str:
        try:
            raw = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("page data is not valid base64") from None
        if len(raw) > MAX_IMAGE_BYTES:
            raise ValueError(f"page image is {len(raw)} bytes; the limit is {MAX_IMAGE_BYTES}")
        if not is_page_file(raw):
            kind = sniff(raw)
            raise ValueError(f"page must be a file in one of: {ACCEPTED}"
                             + (f" (this is a {kind.upper()} file)" if kind else ""))
        return v

    @property
    def media_type(self) -> str:
        """The page file's media type (:func:`media_type_of`; decodes only its first bytes)."""
        return media_type_of(base64.b64decode(self.data[:24]))

    def image_bytes(self) -> bytes:
        """The decoded image file bytes."""
        return base64.b64decode(self.data)


class StoredImage(_Input):
    """A page image held in the job store's blob store (:mod:`raygrade.blobs`), by reference.

    Internal: the store puts one in place of every :class:`ImagePage` of an accepted job,
    and the batcher turns it back into an :class:`ImagePage` for the grader. Clients cannot
    send it: the HTTP API refuses jobs holding one (:meth:`GradingJob.stored_pages`).
    """

    type: Literal["stored_image"] = "stored_image"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    media_type: Literal["image/png", "image/jpeg"]
    width: int = Field(gt=0, description="Pixels.")
    height: int = Field(gt=0, description="Pixels.")
    size: int = Field(ge=0, description="Bytes of the image file.")


class FilePage(_Input):
    """A page of a file uploaded to the Files API (``POST /v1/files``, ``purpose: "pages"``), by
    its id: page ``page`` of it (1-based, as a PDF viewer numbers pages), or every page in order
    when ``page`` is omitted. The file must be the caller's tenant's; when the job is accepted
    the reference becomes the file's stored page images, so deleting the file later changes no
    accepted job."""

    type: Literal["file"] = "file"
    file_id: str = Field(min_length=1, max_length=64, pattern=r"^file-[A-Za-z0-9]+$")
    page: int | None = Field(default=None, ge=1, le=100_000, strict=True,
                             description="1-based page of the file; omitted: all of its pages.")


class TextPage(_Input):
    """One page given as plain text (typed answers, or text already transcribed)."""

    type: Literal["text"] = "text"
    text: str = Field(max_length=200_000, repr=False)


Page = Annotated[ImagePage | TextPage | FilePage | StoredImage, Field(discriminator="type")]
#: A page as graders and planners see it: an accepted job's file pages are already its files'
#: stored page images (:meth:`raygrade.store.JobStore.resolve_files`).
ResolvedPage = Annotated[ImagePage | TextPage | StoredImage, Field(discriminator="type")]


def resolved(page: ImagePage | TextPage | FilePage | StoredImage) -> ImagePage | TextPage | StoredImage:
    """``page``, which is not a :class:`FilePage`.

    Raises:
        InvalidRequestError: a file page (a job read past its acceptance without being resolved).
    """
    if isinstance(page, FilePage):
        from raygrade.errors import InvalidRequestError

        raise InvalidRequestError(f"page of file {page.file_id} was not resolved when the job was accepted",
                                  param="file_id")
    return page
