"""Files uploaded to the Files API (``POST /v1/files``): stored, split into page images, checked.

The ingress streams an upload to a temporary file (Starlette's multipart parser), then
:func:`ingest` copies it to the blob store a chunk at a time, splits it into page images
(:func:`raygrade.blobs.pages_of`: PDF and TIFF pages, HEIC and WebP converted, phone JPEGs
upright, every page decoded once) and stores each of them; the job store then records the file
with its pages' references (:meth:`raygrade.store.JobStore.create_file`). A job names the file's
pages (:class:`raygrade.protocol.FilePage`) and carries no image bytes at all.
"""

from __future__ import annotations

import functools
import os
import re
import unicodedata
from typing import BinaryIO

from raygrade.blobs import BlobStore, check_pixels, pages_of
from raygrade.decode_pool import decode_pool
from raygrade.errors import InvalidRequestError
from raygrade.protocol import StoredImage, media_type_of
from raygrade.scans import ACCEPTED, is_page_file, sniff

#: Most pages an uploaded file may hold: a class's stack of scanned answer sheets (inline base64
#: page files hold at most :data:`raygrade.scans.MAX_PAGES_PER_FILE`).
MAX_FILE_PAGES = 2_000
#: Longest file name kept, in characters.
MAX_FILENAME = 255
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")


def clean_filename(name: str | None) -> str:
    """The base name of an uploaded file's name as a client sent it: no folders, control
    characters or slashes, NFC-normalised, at most :data:`MAX_FILENAME` characters; ``"upload"``
    when nothing is left."""
    base = os.path.basename((name or "").replace("\\", "/"))
    base = _UNSAFE.sub("", unicodedata.normalize("NFC", base)).strip()
    return base[:MAX_FILENAME] or "upload"


def ingest(src: BinaryIO, blobs: BlobStore, filename: str, tenant: str = "", max_pixels: int | None = None
           ) -> tuple[str, int, str, list[StoredImage]]:
    """Store an uploaded page file and its page images in ``blobs``.

    Args:
        src: The file, positioned at its start (seekable: it is read twice, to split it and then
            to store it; Starlette's spooled upload file is).
        blobs: The blob store.
        filename: The file's name, for error messages.
        tenant: The uploader: the file is split as its tasks on the decode pool (a PDF's pages
            one task each), where tenants take turns (:class:`raygrade.decode_pool.FairPool`).
        max_pixels: Most pixels its pages may hold in all, counted from its headers before any
            is decoded (:func:`raygrade.blobs.check_pixels`); ``None``: no limit.

    Returns:
        ``(SHA-256 of the file, its size in bytes, its media type, one reference per page image)``.

    Raises:
        InvalidRequestError: an empty file, a format not accepted, or a file that cannot be split
            into pages (encrypted or corrupt, too many pages, a page over the pixel limit, pages
            over ``max_pixels`` in all): HTTP 400 naming the file and the reason, never its content.
        StorageError: the blob store cannot be written.
    """
    head = src.read(16)
    if not is_page_file(head):
        kind = sniff(head)
        found = f"a {kind.upper()} file" if kind else ("empty" if not head else "not an image or PDF file")
        raise InvalidRequestError(f"file {filename!r} is {found}; accepted: {ACCEPTED}", param="file")
    src.seek(0)
    data = src.read()  # splitting needs the whole file (bounded by api.max_body_bytes)
    check_pixels([data], max_pixels, f"file {filename!r}'s pages")
    pool = decode_pool()
    try:
        if sniff(head) == "pdf":  # one task per page (PDFium's share of each under its lock): every core splits it
            pages = pages_of(data, MAX_FILE_PAGES, functools.partial(pool.map, tenant))
        else:
            pages = pool.submit(tenant, pages_of, data, MAX_FILE_PAGES).result()
    except ValueError as exc:
        raise InvalidRequestError(f"file {filename!r}: {exc}", param="file") from None
    del data
    src.seek(0)  # a file refused above left nothing in the blob store
    sha256, size = blobs.put_stream(src)
    refs = [StoredImage(sha256=blobs.put(img), media_type=media_type_of(img), width=w, height=h, size=len(img))
            for img, (w, h) in pages]
    return sha256, size, media_type_of(head), refs
