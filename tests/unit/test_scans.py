"""Page files as schools make them (``raygrade.scans``), from files the tests build."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image
from support import scan_files

from raygrade.blobs import BlobStore, externalize
from raygrade.errors import InvalidRequestError
from raygrade.protocol import GradingJob, StoredImage
from raygrade.scans import DEFAULT_PDF_DPI, page_images, sniff


def _open(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def _about(size, want) -> bool:
    """Pixel sizes equal to within PDFium's rounding of a page's edge (one pixel)."""
    return all(abs(a - b) <= 1 for a, b in zip(size, want, strict=True))


def _has_ink(im: Image.Image) -> bool:
    return im.convert("L").getextrema()[0] < 100


def test_a_vector_pdf_is_rendered_page_by_page_at_the_stated_dpi():
    pages = page_images(scan_files.vector_pdf(3))
    assert len(pages) == 3
    for data in pages:
        im = _open(data)
        assert im.format == "PNG" and im.mode == "L"  # black text: no colour, kept lossless
        assert _about(im.size, (612 * DEFAULT_PDF_DPI // 72, 792 * DEFAULT_PDF_DPI // 72))  # 1275 × 1650
        assert _has_ink(im), "the page's vector text was rendered"
    [at72] = page_images(scan_files.vector_pdf(1), pdf_dpi=72)
    assert _about(_open(at72).size, (612, 792))


def test_a_scanned_pdf_s_pages_are_its_jpegs_as_scanned_and_keep_their_ink():
    pdf = scan_files.scanned_pdf(2)
    pages = page_images(pdf)
    assert len(pages) == 2 and all(_has_ink(_open(p)) for p in pages) and pages[0] != pages[1]
    # One full-page JPEG per page, at no more than the stated dpi: taken as it is, not re-rendered.
    assert all(_open(p).format == "JPEG" and p in pdf for p in pages)
    assert _open(pages[0]).size == (620, 877)  # 620 × 877 pixels saved at 150 dpi
    colour = io.BytesIO()
    scan_files.page_image("red pen", mode="RGB").save(colour, format="PDF", resolution=150)
    [red] = page_images(colour.getvalue())
    assert _open(red).format == "JPEG" and _open(red).mode == "RGB"  # the marks' colour is kept


def test_a_scan_finer_than_the_stated_dpi_or_a_rotated_page_is_rendered():
    import pypdfium2 as pdfium

    fine = io.BytesIO()  # 620 × 877 pixels at 300 dpi: a page half the size, rendered at 150 dpi
    scan_files.page_image("fine scan").save(fine, format="PDF", resolution=300)
    [page] = page_images(fine.getvalue())
    assert _about(_open(page).size, (310, 438)) and page not in fine.getvalue() and _has_ink(_open(page))
    doc = pdfium.PdfDocument(scan_files.scanned_pdf(1))
    doc[0].set_rotation(90)
    turned = io.BytesIO()
    doc.save(turned)
    doc.close()
    [page] = page_images(turned.getvalue())
    assert _about(_open(page).size, (877, 620)) and _has_ink(_open(page))  # shown as a viewer shows it


def test_a_group4_tiff_becomes_one_lossless_page_per_frame():
    data = scan_files.g4_tiff(2)
    assert Image.open(io.BytesIO(data)).info.get("compression") == "group4"
    pages = page_images(data)
    assert len(pages) == 2
    for data in pages:
        im = _open(data)
        assert im.format == "PNG" and im.size == (620, 877) and _has_ink(im)


def test_a_phone_jpeg_is_turned_upright_and_an_upright_one_is_kept_as_it_is():
    [page] = page_images(scan_files.rotated_phone_jpeg())
    im = _open(page)
    assert im.format == "JPEG" and im.size == (620, 877)
    assert im.getexif().get(0x0112, 1) == 1
    upright = scan_files.page_image(mode="RGB")
    out = io.BytesIO()
    upright.save(out, format="JPEG")
    assert page_images(out.getvalue()) == [out.getvalue()]


@pytest.mark.parametrize("make", [scan_files.heic, scan_files.webp], ids=["heic", "webp"])
def test_heic_and_webp_photos_become_jpeg_pages(make):
    data = make()
    assert sniff(data) in ("heif", "webp")
    [page] = page_images(data)
    im = _open(page)
    assert im.format == "JPEG" and im.size == (620, 877) and _has_ink(im)


@pytest.mark.parametrize("data, needle", [
    (scan_files.gif(), "a GIF file"),
    (b"BM" + b"\0" * 64, "a BMP file"),
    (b"hello, world", "not an image or PDF file"),
    (b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage", "not a readable PDF"),
    (scan_files.encrypted_pdf(), "encrypted"),
    (b"II*\x00" + b"\xff" * 40, "TIFF file cannot be read"),
], ids=["gif", "bmp", "text", "corrupt-pdf", "encrypted-pdf", "corrupt-tiff"])
def test_files_that_are_not_pages_are_refused_by_name(data, needle):
    with pytest.raises(ValueError, match=needle):
        page_images(data)


def test_work_is_bounded_before_pixels_are_decoded():
    with pytest.raises(ValueError, match="has 3 pages; the limit is 2"):
        page_images(scan_files.vector_pdf(3), max_pages=2)
    with pytest.raises(ValueError, match="page 1 of the PDF file at 600 dpi is 5100x6600"):
        page_images(scan_files.vector_pdf(1), pdf_dpi=600, max_pixels=10_000_000)
    with pytest.raises(ValueError, match="page 1 of the TIFF file is 620x877"):
        page_images(scan_files.g4_tiff(1), max_pixels=100_000)


def test_a_job_of_page_files_is_stored_as_consecutive_page_images(tmp_path):
    """What the ingress does on accepting a job: files split into pages, in order, per student."""
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    job = GradingJob.model_validate({
        "assessment": {"questions": [{"id": "q1", "prompt": "Which transport protocols?", "max_score": 2}]},
        "submissions": [
            {"student_id": "pdf", "pages": [{"type": "image", "data": b64(scan_files.vector_pdf(3))},
                                            {"type": "text", "text": "typed note"}]},
            {"student_id": "tiff", "pages": [{"type": "image", "data": b64(scan_files.g4_tiff(2))}]},
            {"student_id": "phone", "pages": [{"type": "image", "data": b64(scan_files.rotated_phone_jpeg())},
                                              {"type": "image", "data": b64(scan_files.heic())},
                                              {"type": "image", "data": b64(scan_files.webp())}]}]})
    stored = externalize(job, BlobStore(str(tmp_path / "blobs")))
    kinds = [[p.type for p in s.pages] for s in stored.submissions]
    assert kinds == [["stored_image"] * 3 + ["text"], ["stored_image"] * 2, ["stored_image"] * 3]
    pdf_pages = [p for p in stored.submissions[0].pages if isinstance(p, StoredImage)]
    assert len({p.sha256 for p in pdf_pages}) == 3 and all(_about((p.width, p.height), (1275, 1650)) for p in pdf_pages)
    assert [p.media_type for p in stored.submissions[1].pages] == ["image/png"] * 2
    assert (stored.submissions[2].pages[0].width, stored.submissions[2].pages[0].height) == (620, 877)

    bad = job.model_copy(deep=True)
    bad.submissions[2].pages[1].data = b64(scan_files.encrypted_pdf())
    with pytest.raises(InvalidRequestError, match=r"submissions\[2\]\.pages\[1\]: the PDF file is encrypted"):
        externalize(bad, BlobStore(str(tmp_path / "blobs")))


def test_model_answer_images_stay_png_or_jpeg():
    with pytest.raises(ValueError, match="model_answer_images"):
        GradingJob.model_validate({
            "assessment": {"questions": [{"id": "q1", "prompt": "p", "max_score": 1, "model_answer_images": [
                {"type": "image", "data": base64.b64encode(scan_files.vector_pdf(1)).decode()}]}]},
            "submissions": [{"student_id": "s", "pages": [{"type": "text", "text": "x"}]}]})


def test_bulk_rows_split_their_page_files_the_same_way():
    from raygrade.bulk.schema import submission_rows_to_jobs
    from raygrade.protocol import Assessment

    assessment = Assessment.model_validate({"questions": [{"id": "q1", "prompt": "p", "max_score": 1}]})
    rows = [{"submission_id": "a", "student_id": "a", "page_images": [scan_files.vector_pdf(3), scan_files.webp()]},
            {"submission_id": "b", "student_id": "b", "page_images": [scan_files.encrypted_pdf()]}]
    subs, errors = submission_rows_to_jobs(rows, assessment)
    assert [(s.student_id, len(s.pages)) for s in subs] == [("a", 4)]
    assert [(e["submission_id"], e["error_type"]) for e in errors] == [("b", "invalid_request_error")]
    assert errors[0]["error_message"].startswith("page_images[0]: the PDF file is encrypted")


def _mixed_pdf() -> bytes:
    """Vector pages, scanned pages and a scanned page whose JPEG stream Pillow cannot open."""
    import pypdfium2 as pdfium

    broken = scan_files.scanned_pdf(1).replace(b"\xff\xd8\xff", b"\xff\xd9\xff", 1)  # no JPEG SOI any more
    doc = pdfium.PdfDocument.new()
    for part in (scan_files.vector_pdf(2), scan_files.scanned_pdf(3), broken, scan_files.vector_pdf(1)):
        src = pdfium.PdfDocument(part)
        doc.import_pages(src)
        src.close()
    out = io.BytesIO()
    doc.save(out)
    doc.close()
    return out.getvalue()


def test_a_pdf_split_on_many_threads_at_once_gives_the_pages_of_a_serial_split():
    """PDFium is not thread-safe, even across documents: every call holds one process-wide lock,
    while Pillow finishes pages (checking a scan's JPEG, encoding a render) on every thread."""
    from concurrent.futures import ThreadPoolExecutor

    pdf = _mixed_pdf()
    serial = page_images(pdf)
    assert [_open(p).format for p in serial] == ["PNG", "PNG", "JPEG", "JPEG", "JPEG", "PNG", "PNG"]
    assert all(p in pdf for p in serial[2:5]) and serial[5] not in pdf  # the broken stream is rendered
    with ThreadPoolExecutor(4) as pages_pool, ThreadPoolExecutor(4) as files_pool:
        def split(_: int) -> list[bytes]:
            return page_images(pdf, map_pages=lambda fn, ks: list(pages_pool.map(fn, ks)))

        assert list(files_pool.map(split, range(8))) == [serial] * 8
        # Every page's size is checked before any page is read.
        with pytest.raises(ValueError, match="page 1 of the PDF file"):
            page_images(pdf, max_pixels=1275 * 1650 - 1, map_pages=lambda fn, ks: list(pages_pool.map(fn, ks)))
        # A split that fails while pages are queued (the first failure is raised, the rest still
        # run): the document is closed under the lock, and the pages not begun stop without reading it.
        queued = []

        def failing(fn, ks):
            queued.extend(pages_pool.submit(fn, k) for k in ks)
            raise ValueError("a page failed")

        with pytest.raises(ValueError, match="a page failed"):
            page_images(pdf, map_pages=failing)
        assert all(f.exception() is None or "was closed" in str(f.exception()) for f in queued)


def test_a_scanned_pages_jpeg_is_taken_only_when_whole_plain_and_no_larger_than_the_page():
    """The stream is checked from its markers, not decoded: a truncated stream (no EOI), CMYK, an
    EXIF rotation or a size over the page's render (a header that lies) makes the page rendered."""
    from raygrade.scans import _plain_jpeg

    def jpeg(mode: str = "L", size=(200, 100), **kw) -> bytes:
        out = io.BytesIO()
        Image.effect_noise(size, 60).convert(mode).save(out, format="JPEG", **kw)  # mostly scan data
        return out.getvalue()

    good = jpeg()
    assert _plain_jpeg(good, 200, 100) and _plain_jpeg(jpeg("RGB"), 200, 100)
    assert _plain_jpeg(good + b"\x00\x00\r\n", 200, 100)  # padding after EOI, as some scanners write
    assert not _plain_jpeg(good[:len(good) // 2], 200, 100)  # truncated in the scan: no EOI
    assert not _plain_jpeg(jpeg("CMYK"), 200, 100)
    exif = Image.Exif()
    exif[0x0112] = 6
    assert not _plain_jpeg(jpeg(exif=exif.tobytes()), 200, 100)
    assert not _plain_jpeg(good, 190, 95) and _plain_jpeg(good, 191, 96)  # 5 % slack
    assert not _plain_jpeg(b"\xff\xd9" + good[2:], 200, 100)  # no SOI
