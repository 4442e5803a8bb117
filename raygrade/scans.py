"""Page files as schools make them, turned into the PNG and JPEG page images graders send.

Scanners write PDF (one file per student or per class stack) and multi-page TIFF (often CCITT
Group 4 fax compression); phones write JPEG with an EXIF orientation, HEIC/HEIF and WebP. Each
uploaded page file becomes one or more page images (:func:`page_images`):

========  ===========================================================================
PNG       as it is
JPEG      as it is; re-encoded upright when its EXIF orientation is not 1
WebP      decoded, EXIF orientation applied, re-encoded (PNG or JPEG, :func:`_encode`)
HEIC/HEIF decoded with ``pillow-heif``, EXIF orientation applied, re-encoded
TIFF      every frame (a multi-page scan), each re-encoded
PDF       every page rendered at ``pdf_dpi`` with ``pypdfium2`` (PDFium: vector and scanned
          pages alike), each re-encoded (PNG when it has no colour); a scanned page that is
          one upright JPEG at no more than ``pdf_dpi`` is that JPEG as it is
========  ===========================================================================

Every other format (GIF, BMP, …) is refused. Work is bounded before pixels are decoded: a
frame's or a PDF page's pixel size is read from the header (a PDF page's from its media box
at ``pdf_dpi``) and checked against ``max_pixels``, and a file may hold at most ``max_pages``
pages. A page image keeps its pixel size (a PDF page's is its size at ``pdf_dpi``, or its
scanned JPEG's, which is no larger), so the provider's image-token rule (:mod:`raygrade.tokens`)
counts what is sent.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Callable

#: Most pixels a page image may have (width × height): 64 M, an A4 page scanned at 600 dpi
#: (4961 × 7016 = 34.8 M) with room to spare. Checked from the header before any pixel is
#: decoded, so a small file that decodes to gigabytes (a decompression bomb) is refused cheaply.
MAX_PAGE_PIXELS = 64_000_000
#: Dots per inch a PDF page is rendered at: 150 keeps handwriting legible to vision models and OCR
#: (an A4 page is 1240 × 1754 pixels) at a quarter of 300 dpi's pixels.
DEFAULT_PDF_DPI = 150
#: Most pages one uploaded file may hold (a class stack of 40 students × 5 pages fits).
MAX_PAGES_PER_FILE = 200
#: JPEG quality of a re-encoded colour photo (Pillow's scale; 90 is visually lossless for pages).
JPEG_QUALITY = 90

_MAGIC = [(b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"%PDF-", "pdf"),
          (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"), (b"GIF87a", "gif"), (b"GIF89a", "gif"), (b"BM", "bmp")]
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif"}

#: The formats :func:`page_images` accepts, for messages and docs.
ACCEPTED = "PNG, JPEG, WebP, TIFF, HEIC/HEIF or PDF"


def sniff(data: bytes) -> str | None:
    """The file format of ``data`` from its first 16 bytes: ``png``, ``jpeg``, ``webp``, ``tiff``,
    ``heif``, ``pdf``, ``gif``, ``bmp``, or ``None`` when unknown."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "heif"
    return None


def is_page_file(data: bytes) -> bool:
    """Whether ``data`` is in one of the formats :func:`page_images` accepts (magic bytes only)."""
    return sniff(data) in {"png", "jpeg", "webp", "tiff", "heif", "pdf"}


#: ``map_pages(fn, pages)`` → ``[fn(k) for k in pages]``, in order, perhaps on several threads.
MapPages = Callable[[Callable[[int], bytes], list[int]], list[bytes]]


def page_images(data: bytes, *, pdf_dpi: int = DEFAULT_PDF_DPI, max_pixels: int = MAX_PAGE_PIXELS,
                max_pages: int = MAX_PAGES_PER_FILE, map_pages: MapPages | None = None) -> list[bytes]:
    """The page images (PNG or JPEG files, in page order) of one uploaded page file.

    Args:
        data: The file's bytes.
        pdf_dpi: Dots per inch a PDF page is rendered at.
        max_pixels: Most pixels (width × height) of one page, checked before decoding it.
        max_pages: Most pages the file may hold.
        map_pages: How a PDF's pages are finished once PDFium has read them (checking a scanned
            JPEG, encoding a render: Pillow, outside the process's PDFium lock): a parallel map
            spreads one file over every core (the Files API passes the decode pool's);
            ``None``: one after another, here.

    Raises:
        ValueError: a format not accepted (named), an encrypted, corrupt or empty file, more than
            ``max_pages`` pages, or a page over ``max_pixels``. The message names the problem,
            never the file's content.
    """
    kind = sniff(data)
    if kind in ("png", "jpeg"):
        return [_upright_jpeg(data, max_pixels) if kind == "jpeg" else data]
    if kind == "pdf":
        return _pdf_pages(data, pdf_dpi, max_pixels, max_pages, map_pages or (lambda fn, ks: [fn(k) for k in ks]))
    if kind in ("webp", "tiff", "heif"):
        return _frames(data, kind, max_pixels, max_pages)
    found = f"a {kind.upper()} file" if kind else "not an image or PDF file"
    raise ValueError(f"the page is {found}; accepted: {ACCEPTED}")


def pixel_count(data: bytes, pdf_dpi: int = DEFAULT_PDF_DPI) -> int:
    """Pixels (width × height, summed over its pages) of a page file, from its headers only: an
    image's size, every TIFF frame's, a PDF page's media box at ``pdf_dpi``. What decoding it
    would produce, known before a pixel is decoded.

    Raises:
        ValueError: a file whose headers cannot be read (its decoding would fail too).
    """
    kind = sniff(data)
    if kind == "pdf":
        try:
            import pypdfium2 as pdfium
        except ImportError:  # a core dependency; only a broken install lacks it
            raise ValueError("the PDF file cannot be read (no pypdfium2 package)") from None
        scale = pdf_dpi / 72.0
        with _PDFIUM:
            try:
                pdf = pdfium.PdfDocument(data)
            except Exception:
                raise ValueError("the PDF file cannot be read") from None
            try:
                sizes = (pdf.get_page_size(k) for k in range(len(pdf)))
                return sum(round(w * scale) * round(h * scale) for w, h in sizes)
            finally:
                pdf.close()
    if kind is None:
        raise ValueError("not a page file")
    from PIL import ImageSequence

    im = _open(data, kind)
    try:
        if kind == "tiff":
            return sum(f.size[0] * f.size[1] for f in ImageSequence.Iterator(im))
        return im.size[0] * im.size[1]
    finally:
        im.close()


def _open(data: bytes, kind: str):
    from PIL import Image

    if kind == "heif":
        try:
            import pillow_heif
        except ImportError:  # a core dependency; only a broken install lacks it
            raise ValueError("HEIC/HEIF pages need the pillow-heif package") from None
        pillow_heif.register_heif_opener()
    try:
        im = Image.open(io.BytesIO(data))
        im.size  # noqa: B018  (the header is read)
        return im
    except Image.DecompressionBombError:
        raise ValueError("the page image is larger than the decompression-bomb limit") from None
    except Exception as exc:
        raise ValueError(f"the {kind.upper()} file cannot be read ({type(exc).__name__})") from None


def _encode(im) -> bytes:
    """A decoded page as PNG (bilevel, grey or palette scans: lossless and small) or JPEG (colour
    photos: a tenth of PNG's size)."""
    out = io.BytesIO()
    if im.mode in ("1", "L", "P", "LA", "I;16"):
        (im.convert("L") if im.mode in ("LA", "I;16") else im).save(out, format="PNG", optimize=im.mode == "1")
    else:
        im.convert("RGB").save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def _grey_if_no_colour(im):
    """An RGB render as a greyscale image when its three channels are equal everywhere (black
    text, grey scans: stored as PNG, lossless and smaller), else as it is (a red pen stays red)."""
    from PIL import ImageChops

    if im.mode != "RGB":
        return im
    r, g, b = im.split()
    if ImageChops.difference(r, g).getbbox() is None and ImageChops.difference(g, b).getbbox() is None:
        return r
    return im


def _check_pixels(w: int, h: int, max_pixels: int, what: str) -> None:
    if w * h > max_pixels:
        raise ValueError(f"{what} is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")


def _upright_jpeg(data: bytes, max_pixels: int) -> bytes:
    """A JPEG as it is, or re-encoded upright when its EXIF orientation says it is rotated or
    mirrored (phones store the sensor's orientation and a tag; not every model reads the tag)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as im:
            orientation = im.getexif().get(0x0112, 1)
            if orientation in (None, 1):
                return data
            w, h = im.size
            _check_pixels(w, h, max_pixels, "the page image")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                upright = ImageOps.exif_transpose(im)
            out = io.BytesIO()
            upright.convert("RGB").save(out, format="JPEG", quality=JPEG_QUALITY)
            return out.getvalue()
    except ValueError:
        raise
    except Exception:  # unreadable EXIF: the file goes on as it is; decoding it is checked later
        return data


def _frames(data: bytes, kind: str, max_pixels: int, max_pages: int) -> list[bytes]:
    """Every frame of a WebP, TIFF or HEIF file, upright and re-encoded."""
    from PIL import Image, ImageOps, ImageSequence

    im = _open(data, kind)
    pages: list[bytes] = []
    try:
        n = getattr(im, "n_frames", 1)
        if n > max_pages:
            raise ValueError(f"the {kind.upper()} file has {n} pages; the limit is {max_pages}")
        for k, frame in enumerate(ImageSequence.Iterator(im)):
            w, h = frame.size
            _check_pixels(w, h, max_pixels, f"page {k + 1} of the {kind.upper()} file")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # bounded above
                    frame.load()
                    pages.append(_encode(ImageOps.exif_transpose(frame)))
            except Exception as exc:
                raise ValueError(f"page {k + 1} of the {kind.upper()} file cannot be decoded "
                                 f"({type(exc).__name__})") from None
            if kind == "webp":  # an animated WebP is not a document: its first frame is the page
                break
    finally:
        im.close()
    return pages


def _jpeg_stream(pdfium, page, w: int, h: int) -> bytes | None:
    """The JPEG a scanned PDF page is, when the page is exactly that: one upright image object
    covering the page, a plain JPEG stream (``DCTDecode`` only), no larger than the page rendered
    at the stated dpi (``w`` × ``h`` pixels, 5 % slack). Its bytes are what a render would show,
    taken as they are instead of rendering and re-encoding the page (≈ 0.1 ms instead of ≈ 20 ms;
    measured in ``benchmarks/uploads.py``) once :func:`_plain_jpeg` accepts them. ``None``
    otherwise. PDFium calls only: the caller holds :data:`_PDFIUM`."""
    if page.get_rotation() % 360:
        return None
    objs = list(page.get_objects(max_depth=1))
    if len(objs) != 1 or objs[0].type != pdfium.raw.FPDF_PAGEOBJ_IMAGE or objs[0].get_filters() != ["DCTDecode"]:
        return None
    img = objs[0]
    m = img.get_matrix()
    left, bottom, right, top = img.get_bounds()
    w_pt, h_pt = page.get_size()
    iw, ih = img.get_px_size()
    if (m.b, m.c) != (0, 0) or m.a <= 0 or m.d <= 0 or iw > w * 1.05 or ih > h * 1.05:
        return None
    if (right - left) * (top - bottom) < 0.95 * w_pt * h_pt:
        return None
    return bytes(img.get_data(decode_simple=False))


def _plain_jpeg(data: bytes, w: int, h: int) -> bool:
    """Whether ``data`` is a whole JPEG in grey or RGB, without an EXIF orientation, at most ``w``
    × ``h`` pixels (5 % slack): its markers up to the scan parse (Pillow) and it ends with EOI (a
    truncated stream is rendered instead). Not decoded, as ``img2pdf`` and ``pdfimages`` take such
    streams: a 1/8-scale decode took ≈ 0.6 ms a page, half the CPU of splitting a class PDF."""
    from PIL import Image

    if not data.rstrip(b"\x00\t\n\r ").endswith(b"\xff\xd9"):
        return False
    try:
        with Image.open(io.BytesIO(data)) as im:
            return (im.format == "JPEG" and im.mode in ("L", "RGB") and im.getexif().get(0x0112, 1) in (None, 1)
                    and im.width <= w * 1.05 and im.height <= h * 1.05)
    except Exception:  # a stream Pillow cannot read: the render decides
        return False


#: PDFium is not thread-safe, not even across documents ("only a single pdfium call at a time",
#: pypdfium2's docs): every PDFium call in the process holds this lock. Pillow's share of a page
#: (checking its JPEG, encoding its render) runs outside it, so one file's pages are finished on
#: every core at once when :func:`page_images` is given a parallel ``map_pages``.
_PDFIUM = threading.Lock()


def _pdf_pages(data: bytes, dpi: int, max_pixels: int, max_pages: int, map_pages: MapPages) -> list[bytes]:
    """Every page of a PDF rendered at ``dpi`` (PDFium, through ``pypdfium2``) and re-encoded,
    or the scanned JPEG it is (:func:`_jpeg_stream`); pages run through ``map_pages``. Every
    page's size is checked against ``max_pixels`` before any page is read."""
    try:
        import pypdfium2 as pdfium
    except ImportError:  # a core dependency; only a broken install lacks it
        raise ValueError("PDF pages need the pypdfium2 package") from None
    scale = dpi / 72.0  # PDF user space is 1/72 inch
    with _PDFIUM:
        try:
            pdf = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as exc:
            reason = "encrypted (a password is needed)" if "password" in str(exc).lower() else "not a readable PDF"
            raise ValueError(f"the PDF file is {reason}") from None
    closed = False  # set (under the lock) when the document is closed: a page task still queued stops
    sizes: list[tuple[int, int]] = []

    def render(k: int, jpeg: bool):
        """Page ``k``'s JPEG stream (``jpeg``, when it is one) or its render as a PIL image."""
        with _PDFIUM:
            if closed:
                raise ValueError("the PDF file was closed")
            page = pdf[k]
            try:
                if jpeg and (stream := _jpeg_stream(pdfium, page, *sizes[k])) is not None:
                    return stream
                bitmap = page.render(scale=scale, grayscale=False)
                try:
                    return bitmap.to_pil().copy()  # PIL may share the bitmap's buffer: copied before it is freed
                finally:
                    bitmap.close()
            finally:
                page.close()

    def one(k: int) -> bytes:
        got = render(k, jpeg=True)
        if isinstance(got, bytes):
            if _plain_jpeg(got, *sizes[k]):
                return got
            got = render(k, jpeg=False)  # a stream Pillow refuses: rendered like any other page
        return _encode(_grey_if_no_colour(got))

    try:
        with _PDFIUM:
            n = len(pdf)
            if n == 0:
                raise ValueError("the PDF file has no pages")
            if n > max_pages:
                raise ValueError(f"the PDF file has {n} pages; the limit is {max_pages}")
            sizes += [(round(w * scale), round(h * scale)) for w, h in (pdf.get_page_size(k) for k in range(n))]
        for k, (w, h) in enumerate(sizes):
            _check_pixels(w, h, max_pixels, f"page {k + 1} of the PDF file at {dpi} dpi")
        return map_pages(one, list(range(n)))
    except pdfium.PdfiumError as exc:
        raise ValueError(f"the PDF file cannot be rendered ({type(exc).__name__})") from None
    finally:
        with _PDFIUM:
            closed = True
            pdf.close()
