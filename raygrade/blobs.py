"""Page images on their way into the blob store: checked, split from page files, stored, read back.
(The store itself, content-addressed by SHA-256, is :mod:`raygrade.blob_store`, re-exported here.)

The job store keeps references (:class:`raygrade.protocol.StoredImage`: SHA-256, media type,
pixel size) in job bodies and batch payloads, so leasing, completing and polling a job
never move or parse image bytes; a grader replica reads the bytes of the batch it grades
(:func:`inline_batch`), or, when the store is a folder on another node, the batcher reads them
and hands them over through Ray's object store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from raygrade.blob_store import BlobStore, default_blob_uri, is_local
from raygrade.decode_pool import decode_pool
from raygrade.errors import InvalidRequestError
from raygrade.protocol import MAX_PAGES, GradingJob, ImagePage, StoredImage, media_type_of
from raygrade.scans import MAX_PAGE_PIXELS, MAX_PAGES_PER_FILE, MapPages, page_images, pixel_count

if TYPE_CHECKING:
    from raygrade.batch import GradeBatch

__all__ = ["BlobStore", "check_image", "check_model_answer_images", "check_pixels", "check_student_pages",
           "default_blob_uri", "externalize", "has_stored_pages", "image_size", "inline", "inline_batch", "is_local",
           "page_bytes", "pages_of"]
T = TypeVar("T")


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


def pages_of(data: bytes, max_pages: int = MAX_PAGES_PER_FILE, map_pages: MapPages | None = None
             ) -> list[tuple[bytes, tuple[int, int]]]:
    """The page images of one uploaded page file (:func:`raygrade.scans.page_images`, at most
    ``max_pages``, a PDF's pages finished through ``map_pages``) with their pixel sizes: a PNG or
    JPEG kept as uploaded is decoded (:func:`check_image`); one that scans encoded from decoded
    pixels has its size read from its header.

    Raises:
        ValueError: the file or a page image cannot be read, or has too many pages (see both functions)."""
    return [(img, check_image(img) if img is data else image_size(img))
            for img in page_images(data, max_pages=max_pages, map_pages=map_pages)]


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


def has_stored_pages(batch: GradeBatch) -> bool:
    """Whether any page of ``batch`` is a :class:`StoredImage` (its bytes in the blob store)."""
    return any(isinstance(p, StoredImage) for st in batch.students for p in st.pages)


def inline_batch(batch: GradeBatch, blobs: BlobStore) -> GradeBatch:
    """``batch`` with its stored pages as :class:`ImagePage` s (:func:`inline`); ``batch`` itself
    when it has none.

    Raises:
        StorageError: a blob is missing or corrupt.
    """
    if not has_stored_pages(batch):
        return batch
    students = [st.model_copy(update={"pages": [inline(p, blobs) for p in st.pages]}) for st in batch.students]
    return batch.model_copy(update={"students": students})
