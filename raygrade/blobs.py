"""Content-addressed page images: each accepted page's bytes stored once, outside the job rows.

The job store keeps references (:class:`raygrade.protocol.StoredImage`: SHA-256, media type,
pixel size) in job bodies and batch payloads, so leasing, completing and polling a job
never move or parse image bytes; the batcher reads the bytes of the batch it dispatches
and hands them to a grader replica through Ray's object store.

Where the bytes live (``StoreConfig.blob_uri``): a folder (default: ``blobs/`` beside the
SQLite file, or ``$RAYGRADE_HOME/blobs``; on the head node, where the registry and the
batcher are placed), or any filesystem :func:`pyarrow.fs.FileSystem.from_uri` opens
(``s3://bucket/prefix``, ``gs://…``, ``hdfs://…``) for clusters whose replicas run
anywhere. Layout: ``<root>/<first two hex digits>/<sha256>``; writes go to a temporary
name and are moved into place, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Callable
from typing import BinaryIO, TypeVar

from pyarrow import fs as pafs

from raygrade.decode_pool import decode_pool
from raygrade.errors import InvalidRequestError, StorageError
from raygrade.protocol import MAX_PAGES, GradingJob, ImagePage, StoredImage, media_type_of
from raygrade.scans import MAX_PAGE_PIXELS, MAX_PAGES_PER_FILE, page_images, pixel_count

_KEY = re.compile(r"^[0-9a-f]{64}$")
T = TypeVar("T")


def default_blob_uri(store_url: str) -> str:
    """``blobs/`` beside a SQLite file, else ``$RAYGRADE_HOME/blobs`` (default ``~/.raygrade/blobs``)."""
    if store_url.startswith("sqlite"):
        import sqlalchemy as sa

        path = sa.engine.make_url(store_url).database
        if path and path != ":memory:":
            return os.path.join(os.path.dirname(os.path.abspath(os.path.expanduser(path))), "blobs")
    home = os.environ.get("RAYGRADE_HOME") or os.path.join(os.path.expanduser("~"), ".raygrade")
    return os.path.join(home, "blobs")


def is_local(uri: str) -> bool:
    """True for a plain path or ``file://`` URI (readable only on the node that holds it)."""
    return "://" not in uri or uri.startswith("file://")


class BlobStore:
    """SHA-256-addressed bytes in a folder or a pyarrow filesystem.

    Args:
        uri: A path, ``file:///path``, or a URI :func:`pyarrow.fs.FileSystem.from_uri` accepts.

    Raises:
        StorageError: the location cannot be opened or created.
    """

    def __init__(self, uri: str):
        self.uri = uri
        try:
            if "://" in uri:
                self._fs, root = pafs.FileSystem.from_uri(uri)
            else:
                self._fs, root = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
            self._fs.create_dir(root, recursive=True)
        except Exception as exc:  # pyarrow raises OSError / ArrowInvalid with the cause
            raise StorageError(f"blob store {uri!r} cannot be opened: {type(exc).__name__}", param="blob_uri") from exc
        self._root = root.rstrip("/")
        self._known: set[str] = set()  # keys this process wrote or saw: skips an existence check

    def _path(self, key: str) -> str:
        if not _KEY.match(key):
            raise StorageError(f"not a blob key: {key[:80]!r}", param="sha256")
        return f"{self._root}/{key[:2]}/{key}"

    def put(self, data: bytes) -> str:
        """Store ``data`` (once: an existing blob is not rewritten); returns its SHA-256 hex key.

        Raises:
            StorageError: the write failed.
        """
        key = hashlib.sha256(data).hexdigest()
        if key in self._known:
            return key
        path = self._path(key)
        try:
            if self._fs.get_file_info(path).type == pafs.FileType.NotFound:
                self._fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
                tmp = f"{path}.{uuid.uuid4().hex}.tmp"
                with self._fs.open_output_stream(tmp) as f:
                    f.write(data)
                self._fs.move(tmp, path)
        except Exception as exc:
            raise StorageError(f"could not store a page image: {type(exc).__name__}", param="blob_uri") from exc
        self._known.add(key)
        return key

    def put_stream(self, src: BinaryIO, chunk: int = 1 << 20) -> tuple[str, int]:
        """Store the bytes read from ``src`` (to its end), ``chunk`` bytes at a time: never the whole
        file in memory. Returns ``(SHA-256 hex key, size in bytes)``; an existing blob is kept.

        Raises:
            StorageError: the write failed.
        """
        digest, size = hashlib.sha256(), 0
        tmp = f"{self._root}/tmp/{uuid.uuid4().hex}.tmp"
        try:
            self._fs.create_dir(f"{self._root}/tmp", recursive=True)
            with self._fs.open_output_stream(tmp) as f:
                while part := src.read(chunk):
                    digest.update(part)
                    size += len(part)
                    f.write(part)
            key = digest.hexdigest()
            path = self._path(key)
            if key in self._known or self._fs.get_file_info(path).type != pafs.FileType.NotFound:
                self._fs.delete_file(tmp)
            else:
                self._fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
                self._fs.move(tmp, path)
        except Exception as exc:
            if self._fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                self._fs.delete_file(tmp)
            raise StorageError(f"could not store an uploaded file: {type(exc).__name__}", param="blob_uri") from exc
        self._known.add(key)
        return key, size

    def get(self, key: str) -> bytes:
        """The bytes stored under ``key``, checked against it.

        Raises:
            StorageError: no such blob, or its bytes do not match the key (corruption).
        """
        path = self._path(key)
        try:
            with self._fs.open_input_stream(path) as f:
                data = f.read()
        except FileNotFoundError:
            raise StorageError(f"page image {key[:12]}… is missing from the blob store {self.uri!r}",
                               param="sha256") from None
        except Exception as exc:
            raise StorageError(f"could not read a page image: {type(exc).__name__}", param="sha256") from exc
        if hashlib.sha256(data).hexdigest() != key:
            raise StorageError(f"page image {key[:12]}… is corrupt in the blob store", param="sha256")
        self._known.add(key)
        return data


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) in pixels from an image file's header (pixels are not decoded).

    Raises:
        ValueError: not an image Pillow can identify, or larger than Pillow's
            decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS`` × 2).
    """
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Image.DecompressionBombError:
        raise ValueError(f"the page image has more than {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels "
                         "(decompression-bomb guard)") from None
    except Exception as exc:  # UnidentifiedImageError, DecompressionBombError, truncated headers
        raise ValueError(f"the page image cannot be read ({type(exc).__name__})") from None


def check_image(data: bytes, max_pixels: int = MAX_PAGE_PIXELS) -> tuple[int, int]:
    """(width, height) of an image file once its header is checked against ``max_pixels`` and
    its whole pixel stream decoded (what a grader or OCR would do with it later). A JPEG is
    decoded at 1/8 scale (Pillow's ``draft``): every entropy-coded block is still read, so a
    truncated or corrupt file fails the same way, at a fraction of the cost.

    Raises:
        ValueError: not an image Pillow can identify, more than ``max_pixels`` pixels (a
            decompression bomb included), or pixel data that does not decode (corrupt, truncated).
    """
    import io
    import warnings

    from PIL import Image

    w, h = image_size(data)
    if w * h > max_pixels:
        raise ValueError(f"the page image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # bounded above, by our own limit
            with Image.open(io.BytesIO(data)) as im:
                if im.format == "JPEG":
                    im.draft(im.mode, (max(1, w // 8), max(1, h // 8)))
                im.load()
    except Exception as exc:  # truncated or corrupt pixel data
        raise ValueError(f"the page image cannot be decoded ({type(exc).__name__})") from None
    return w, h


def _decode_all(fn: Callable[[bytes], T], files: list[bytes], tenant: str = "") -> list[T | ValueError]:
    """``fn`` of each file, run concurrently as ``tenant``'s tasks on the decode pool
    (:func:`raygrade.decode_pool.decode_pool`: tenants take turns; one file runs here); a
    ``ValueError`` is returned in place."""
    def one(data: bytes) -> T | ValueError:
        try:
            return fn(data)
        except ValueError as exc:
            return exc

    if len(files) < 2:
        return [one(d) for d in files]
    return decode_pool().map(tenant, one, files)


def check_model_answer_images(job: GradingJob, tenant: str = "") -> None:
    """Decode every model-answer image of ``job``'s questions (:func:`check_image`), as ``tenant``'s
    tasks on the decode pool.

    Raises:
        InvalidRequestError: an image that does not decode or is too large (HTTP 400, naming it).
    """
    first: dict[str, tuple[str, bytes]] = {}  # image data → (where, bytes), first occurrence
    for i, q in enumerate(job.assessment.questions):
        for k, img in enumerate(q.model_answer_images):
            if img.data not in first:
                first[img.data] = (f"assessment.questions[{i}].model_answer_images[{k}]", img.image_bytes())
    checked = _decode_all(check_image, [raw for _, raw in first.values()], tenant)
    for (name, _), res in zip(first.values(), checked, strict=True):
        if isinstance(res, ValueError):
            raise InvalidRequestError(f"{name}: {res}", param=f"{name}.data") from None


def pages_of(data: bytes, max_pages: int = MAX_PAGES_PER_FILE) -> list[tuple[bytes, tuple[int, int]]]:
    """The page images of one uploaded page file (:func:`raygrade.scans.page_images`, at most
    ``max_pages``) with their pixel sizes: a PNG or JPEG kept as uploaded is decoded
    (:func:`check_image`); one that scans encoded from decoded pixels has its size read from its header.

    Raises:
        ValueError: the file or a page image cannot be read, or has too many pages (see both functions)."""
    return [(img, check_image(img) if img is data else image_size(img))
            for img in page_images(data, max_pages=max_pages)]


def check_pixels(files: list[bytes], max_pixels: int | None, what: str) -> None:
    """Refuse ``files`` whose pages hold more than ``max_pixels`` pixels in all, counted from their
    headers (:func:`raygrade.scans.pixel_count`) before any is decoded; ``None``: no limit. A file
    whose headers cannot be read is left to its decoding, which refuses it naming it.

    Raises:
        InvalidRequestError: over the limit (HTTP 400; ``param``: ``api.max_request_pixels``).
    """
    if max_pixels is None:
        return
    total = 0
    for data in files:
        try:
            total += pixel_count(data)
        except ValueError:
            continue
        if total > max_pixels:
            raise InvalidRequestError(f"{what} hold more than {max_pixels} pixels (counted from their headers, "
                                      f"before decoding); split the work into smaller requests",
                                      param="api.max_request_pixels")


def externalize(job: GradingJob, blobs: BlobStore, tenant: str = "", max_pixels: int | None = None) -> GradingJob:
    """``job`` with every submission page file turned into page images (PDF and TIFF pages,
    HEIC, WebP and rotated phone JPEGs: :mod:`raygrade.scans`) and moved to ``blobs``: one
    :class:`StoredImage` reference per page image (SHA-256, media type, pixel size); the same
    bytes are stored once. A multi-page file becomes that many consecutive pages of its student.
    Pages already stored and text pages are kept as they are.

    Every page image is decoded first (:func:`check_image`), and so are the questions' model-answer
    images (which stay inline): a page that would fail later is refused now, naming it. The
    decoding runs as ``tenant``'s tasks on the decode pool, where tenants take turns
    (:class:`raygrade.decode_pool.FairPool`), once the pages' pixels counted from their headers are
    within ``max_pixels`` (:func:`check_pixels`).

    Raises:
        InvalidRequestError: a page file in no accepted format, encrypted or corrupt, a page image
            that does not decode or is past :data:`MAX_PAGE_PIXELS`, or a student with more than
            :data:`raygrade.protocol.MAX_PAGES` pages once files are split (HTTP 400, naming the
            page or the submission), or page files over ``max_pixels`` in all.
        StorageError: the blob store cannot be written.
    """
    check_model_answer_images(job, tenant)
    first: dict[str, tuple[int, int, bytes]] = {}  # page data → (submission, page, bytes), first occurrence
    for i, sub in enumerate(job.submissions):
        for k, page in enumerate(sub.pages):
            if isinstance(page, ImagePage) and page.data not in first:
                first[page.data] = (i, k, page.image_bytes())
    check_pixels([raw for _, _, raw in first.values()], max_pixels, "the job's page files")
    results = _decode_all(pages_of, [raw for _, _, raw in first.values()], tenant)
    refs: dict[str, list[StoredImage]] = {}
    for (data, (i, k, _)), res in zip(first.items(), results, strict=True):
        if isinstance(res, ValueError):
            raise InvalidRequestError(f"submissions[{i}].pages[{k}]: {res}",
                                      param=f"submissions[{i}].pages[{k}].data") from None
        refs[data] = [StoredImage(sha256=blobs.put(img), media_type=media_type_of(img), width=w, height=h,
                                  size=len(img)) for img, (w, h) in res]
    subs = []
    for i, sub in enumerate(job.submissions):
        if any(isinstance(p, ImagePage) for p in sub.pages):
            pages = [ref for p in sub.pages for ref in (refs[p.data] if isinstance(p, ImagePage) else [p])]
            check_student_pages(i, len(pages))
            sub = sub.model_copy(update={"pages": pages})
        subs.append(sub)
    return job.model_copy(update={"submissions": subs})


def check_student_pages(i: int, pages: int) -> None:
    """Refuse submission ``i`` when its files, split into page images, make more than
    :data:`raygrade.protocol.MAX_PAGES` pages.

    Raises:
        InvalidRequestError: over the limit (HTTP 400, ``param``: ``submissions[i].pages``).
    """
    if pages > MAX_PAGES:
        raise InvalidRequestError(f"submissions[{i}] has {pages} pages once its files are split into "
                                  f"pages; the limit is {MAX_PAGES}", param=f"submissions[{i}].pages")


def page_bytes(page: ImagePage | StoredImage, blobs: BlobStore) -> bytes:
    """The image file bytes of a page, inline or stored.

    Raises:
        StorageError: a stored page's blob is missing or corrupt.
    """
    return blobs.get(page.sha256) if isinstance(page, StoredImage) else page.image_bytes()


def inline(page, blobs: BlobStore):
    """An :class:`ImagePage` holding a :class:`StoredImage`'s bytes; any other page as it is.

    Raises:
        StorageError: the blob is missing or corrupt.
    """
    if not isinstance(page, StoredImage):
        return page
    import base64

    # Bytes from raygrade's own store, checked against their SHA-256: no re-validation.
    return ImagePage.model_construct(type="image", data=base64.b64encode(page_bytes(page, blobs)).decode())
