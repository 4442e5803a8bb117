"""The Files API's store side and uploads (no Ray): files split into stored page images,
tenants' files apart, jobs naming files' pages resolved when accepted."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from support import scan_files

from raygrade.errors import InvalidRequestError, NotFoundError
from raygrade.protocol import MAX_PAGES, FilePage, GradingJob, StoredImage, TextPage
from raygrade.scans import MAX_PAGES_PER_FILE
from raygrade.store import JobStore
from raygrade.uploads import clean_filename, ingest


@pytest.fixture
def store(tmp_path):
    now = [1_000.0]

    def clock():
        now[0] += 1.0  # every record a second apart: a stable newest-first order
        return now[0]

    s = JobStore(f"sqlite:///{tmp_path}/jobs.db", blob_uri=str(tmp_path / "blobs"), clock=clock)
    yield s
    s.close()


def upload(store: JobStore, data: bytes, tenant: str = "school-a", name: str = "scan.pdf"):
    sha256, size, media_type, pages = ingest(io.BytesIO(data), store.blobs, name)
    return store.create_file(tenant, name, size, sha256, media_type, pages)


def job_of(*pages: dict) -> GradingJob:
    return GradingJob.model_validate({
        "assessment": {"questions": [{"id": "q1", "prompt": "What does a router do?", "max_score": 1}]},
        "submissions": [{"student_id": "ada", "pages": list(pages)}]})


def test_an_upload_is_stored_once_and_split_into_its_pages(store):
    pdf = scan_files.vector_pdf(3)
    f = upload(store, pdf)
    assert (f.object, f.purpose, f.pages, f.bytes, f.media_type) == ("file", "pages", 3, len(pdf), "application/pdf")
    assert f.id.startswith("file-") and store.get_file(f.id, "school-a") == f
    key, media_type, name = store.file_content(f.id, "school-a")
    assert store.blobs.get(key) == pdf and (media_type, name) == ("application/pdf", "scan.pdf")
    job = store.resolve_files(job_of({"type": "file", "file_id": f.id}), "school-a")
    pages = job.submissions[0].pages
    assert len(pages) == 3 and all(isinstance(p, StoredImage) for p in pages)
    sizes = {Image.open(io.BytesIO(store.blobs.get(p.sha256))).size for p in pages}
    assert sizes == {(pages[0].width, pages[0].height)} and pages[0].width > 1000  # letter at 150 dpi
    assert len({p.sha256 for p in pages}) == 3  # three different pages


def test_a_job_names_single_pages_and_mixes_them_with_text(store):
    f = upload(store, scan_files.scanned_pdf(2))
    photo = upload(store, scan_files.rotated_phone_jpeg(), name="photo.jpg")
    job = job_of({"type": "text", "text": "typed"}, {"type": "file", "file_id": f.id, "page": 2},
                 {"type": "file", "file_id": photo.id})
    pages = store.resolve_files(job, "school-a").submissions[0].pages
    whole = store.resolve_files(job_of({"type": "file", "file_id": f.id}), "school-a").submissions[0].pages
    assert isinstance(pages[0], TextPage) and pages[1] == whole[1] and len(pages) == 3
    assert (pages[2].width, pages[2].height) == (620, 877)  # the phone photo turned upright
    # Accepted jobs are stored with the references: the file's deletion changes nothing in them.
    status, created = store.create_job(job, tenant="school-a")
    assert created and store.delete_file(f.id, "school-a").deleted
    stored = store.get_job(status.id).submissions[0].pages
    assert stored == pages and not store.get_job(status.id).file_pages()
    with pytest.raises(InvalidRequestError) as e:
        store.create_job(job, tenant="school-a")
    assert e.value.param == "submissions[0].pages[1].file_id" and f.id in e.value.message


def test_files_are_their_tenants_alone(store):
    f = upload(store, scan_files.webp())
    for call in (lambda: store.get_file(f.id, "school-b"), lambda: store.delete_file(f.id, "school-b"),
                 lambda: store.file_content(f.id, "school-b")):
        with pytest.raises(NotFoundError):
            call()
    with pytest.raises(InvalidRequestError, match="no file with id"):
        store.resolve_files(job_of({"type": "file", "file_id": f.id}), "school-b")
    assert store.list_files("school-b") == ([], False) and store.get_file(f.id, "school-a").pages == 1


def test_files_are_listed_newest_first_a_page_at_a_time(store):
    ids = [upload(store, scan_files.webp(), name=f"p{i}.webp").id for i in range(5)]
    first, more = store.list_files("school-a", limit=2)
    assert [x.id for x in first] == ids[::-1][:2] and more
    rest, more = store.list_files("school-a", limit=10, after=first[-1].id)
    assert [x.id for x in rest] == ids[::-1][2:] and not more
    with pytest.raises(NotFoundError):
        store.list_files("school-a", after="file-0000")
    store.delete_file(ids[0], "school-a")
    with pytest.raises(NotFoundError):
        store.delete_file(ids[0], "school-a")
    assert [x.id for x in store.list_files("school-a")[0]] == ids[1:][::-1]


def test_pages_a_file_does_not_have_and_students_past_the_page_limit_are_refused(store):
    f = upload(store, scan_files.vector_pdf(3))
    with pytest.raises(InvalidRequestError) as e:
        store.resolve_files(job_of({"type": "text", "text": "x"}, {"type": "file", "file_id": f.id, "page": 4}),
                            "school-a")
    assert e.value.param == "submissions[0].pages[1].page" and "has 3 page(s); no page 4" in e.value.message
    too_many = [{"type": "file", "file_id": f.id}] * (MAX_PAGES // 3 + 1)
    with pytest.raises(InvalidRequestError, match="the limit is"):
        store.resolve_files(job_of(*too_many), "school-a")
    with pytest.raises(ValueError):
        FilePage(file_id=f.id, page=0)  # pages are numbered from 1, as a PDF viewer shows them


@pytest.mark.parametrize("data, why", [
    (scan_files.gif(), "is a GIF file"), (b"", "is empty"), (b"%PDF-1.7\n garbage", "not a readable PDF"),
    (scan_files.encrypted_pdf(), "encrypted"), (b"hello, world", "not an image or PDF file")])
def test_files_that_are_not_page_files_are_refused_naming_them_and_nothing_is_recorded(store, data, why):
    with pytest.raises(InvalidRequestError) as e:
        upload(store, data, name="class 7b.pdf")
    assert e.value.param == "file" and "'class 7b.pdf'" in e.value.message and why in e.value.message
    assert store.list_files("school-a") == ([], False)


def test_an_upload_s_name_keeps_no_folder_or_control_characters():
    assert clean_filename("../../etc/passwd") == "passwd"
    assert clean_filename("C:\\scans\\7b.pdf") == "7b.pdf"
    assert clean_filename("a\x00b\r\n.pdf") == "ab.pdf"
    assert clean_filename(None) == clean_filename("") == clean_filename("///") == "upload"
    assert len(clean_filename("x" * 1000 + ".pdf")) == 255


def test_a_refused_file_leaves_nothing_in_the_blob_store(store, tmp_path):
    with pytest.raises(InvalidRequestError):
        upload(store, scan_files.encrypted_pdf())
    assert not [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]


def test_an_uploaded_file_holds_up_to_its_own_page_limit(store, monkeypatch):
    from raygrade import uploads

    assert uploads.MAX_FILE_PAGES > MAX_PAGES_PER_FILE  # a class's stack, past an inline file's limit
    monkeypatch.setattr(uploads, "MAX_FILE_PAGES", 3)
    f = upload(store, scan_files.g4_tiff(3), name="class.tif")
    assert f.pages == 3 and f.media_type == "image/tiff"
    monkeypatch.setattr(uploads, "MAX_FILE_PAGES", 2)
    with pytest.raises(InvalidRequestError, match="has 3 pages; the limit is 2"):
        upload(store, scan_files.g4_tiff(3), name="class.tif")



def _huge_bilevel_png(side: int = 8000) -> bytes:
    out = io.BytesIO()
    Image.new("1", (side, side), 1).save(out, format="PNG")  # 64 Mpx in a few kB
    return out.getvalue()


def test_pixels_are_counted_from_headers_and_a_job_or_file_past_the_limit_is_refused_before_decoding(
        store, monkeypatch):
    import base64

    from raygrade import blobs
    from raygrade.scans import pixel_count

    png = _huge_bilevel_png()
    assert pixel_count(png) == 64_000_000 and len(png) < 30_000
    assert pixel_count(scan_files.vector_pdf(3)) == 3 * 1275 * 1650  # letter pages at 150 dpi
    assert pixel_count(scan_files.g4_tiff(2)) == 2 * 620 * 877
    monkeypatch.setattr(blobs, "pages_of", lambda *a: pytest.fail("a page was decoded"))
    # The probe: a thousand small files of 64 Mpx each; refused from their headers.
    probe = GradingJob.model_validate({
        "assessment": {"questions": [{"id": "q1", "prompt": "?", "max_score": 1}]},
        "submissions": [{"student_id": f"s{i}", "pages": [
            {"type": "image", "data": base64.b64encode(scan_files.tagged_png(png, i)).decode()}]} for i in range(100)]})
    with pytest.raises(InvalidRequestError) as e:
        blobs.externalize(probe, store.blobs, "school-a", max_pixels=5_000_000_000)
    assert e.value.param == "api.max_request_pixels" and "more than 5000000000 pixels" in e.value.message
    with pytest.raises(InvalidRequestError, match="'class.pdf''s pages hold more than"):
        ingest(io.BytesIO(scan_files.vector_pdf(3)), store.blobs, "class.pdf", max_pixels=3 * 1275 * 1650 - 1)



def test_a_tenants_stored_file_bytes_are_bounded_by_its_quota(store):
    """``file_bytes``: an upload that would pass it is refused in the file's transaction (and by the
    cheap check the route makes first), other tenants are not affected, a deletion makes room."""
    from raygrade.errors import QuotaExceededError
    from raygrade.protocol import TenantQuota

    pdf = scan_files.vector_pdf(1)
    store.set_quota("school-a", TenantQuota(file_bytes=len(pdf) + 10))
    first = upload(store, pdf)
    u = store.usage("school-a")
    assert (u.files, u.file_bytes, u.quota.file_bytes) == (1, len(pdf), len(pdf) + 10)
    store.check_file_quota("school-a", 10)  # what is left fits
    for refused in (lambda: store.check_file_quota("school-a", 11), lambda: upload(store, pdf, name="again.pdf")):
        with pytest.raises(QuotaExceededError) as e:
            refused()
        assert e.value.code == "file_bytes" and "delete files" in str(e.value)
    assert store.usage("school-a").files == 1  # nothing recorded for the refused upload
    assert upload(store, pdf, tenant="school-b").bytes == len(pdf)  # no quota: no limit
    store.delete_file(first.id, "school-a")
    assert upload(store, pdf, name="again.pdf").bytes == len(pdf)
    assert store.get_quota("school-a").file_bytes == len(pdf) + 10
