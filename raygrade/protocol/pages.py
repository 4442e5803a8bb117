"""Pages of a submission: inline images, stored image references, typed text."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

from pydantic import Field, field_validator

from raygrade.protocol._base import _Input

#: Largest decoded page image accepted, in bytes.
MAX_IMAGE_BYTES = 20 * 1024 * 1024

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"




def media_type_of(data: bytes) -> str:
    """``image/png`` or ``image/jpeg`` from an image file's magic bytes (its first 8 suffice)."""
    return "image/png" if data.startswith(_PNG_MAGIC) else "image/jpeg"


class ImagePage(_Input):
    """One scanned page, as a base64-encoded PNG or JPEG (no ``data:`` prefix)."""

    type: Literal["image"] = "image"
    data: str = Field(description="Base64 PNG or JPEG bytes.", repr=False)

    @field_validator("data")
    @classmethod
    def _check_image(cls, v: str) -> str:
        try:
            raw = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("page data is not valid base64") from None
        if len(raw) > MAX_IMAGE_BYTES:
            raise ValueError(f"page image is {len(raw)} bytes; the limit is {MAX_IMAGE_BYTES}")
        if not (raw.startswith(_PNG_MAGIC) or raw.startswith(_JPEG_MAGIC)):
            raise ValueError("page image must be PNG or JPEG")
        return v

    @property
    def media_type(self) -> str:
        """``image/png`` or ``image/jpeg``, from the magic bytes (decodes only the first few)."""
        return media_type_of(base64.b64decode(self.data[:12]))

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


class TextPage(_Input):
    """One page given as plain text (typed answers, or text already transcribed)."""

    type: Literal["text"] = "text"
    text: str = Field(max_length=200_000, repr=False)


Page = Annotated[ImagePage | TextPage | StoredImage, Field(discriminator="type")]
