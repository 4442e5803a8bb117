"""Garbage collection of the blob store (no Ray): what nothing references goes once the grace
period has passed; what a job or file references, or what is being stored again, stays."""

from __future__ import annotations

import io
import os
import time

import pytest
from support import scan_files

from raygrade.blob_store import REFRESH_S, BlobStore
from raygrade.cli import main
from raygrade.errors import ConfigError
from raygrade.protocol import GradingJob
from raygrade.store import JobStore, blob_gc
from raygrade.uploads import ingest

HOUR = 3600.0


@pytest.fixture
def store(tmp_path):
    s = JobStore(f"sqlite:///{tmp_path}/jobs.db", blob_uri=str(tmp_path / "blobs"))
    yield s
    s.close()


def age(root, seconds: float) -> None:
    """Make every file under ``root`` look ``seconds`` older (as if stored that long ago)."""
    when = time.time() - seconds
    for folder, _, names in os.walk(root):
        for name in names:
            os.utime(os.path.join(folder, name), (when, when))


def upload(store: JobStore, data: bytes, name: str):
    sha256, size, media_type, pages = ingest(io.BytesIO(data), store.blobs, name)
    return store.create_file("school-a", name, size, sha256, media_type, pages)


def job_of(*pages: dict) -> GradingJob:
    return GradingJob.model_validate({
        "assessment": {"questions": [{"id": "q1", "prompt": "What does a router do?", "max_score": 1}]},
        "submissions": [{"student_id": "ada", "pages": list(pages)}]})


def on_disk(tmp_path) -> set[str]:
    return {n for _, _, names in os.walk(tmp_path / "blobs") for n in names if not n.endswith(".tmp")}


def test_a_deleted_files_bytes_go_once_old_and_pages_a_job_uses_stay(store, tmp_path):
    scan = upload(store, scan_files.vector_pdf(3), "scan.pdf")
    photo = upload(store, scan_files.webp(), "photo.webp")
    status, _ = store.create_job(job_of({"type": "file", "file_id": scan.id, "page": 2}), tenant="school-a")
    kept_page = store.get_job(status.id).submissions[0].pages[0].sha256
    before = on_disk(tmp_path)  # the PDF, its 3 pages, the WebP and its page as PNG
    assert len(before) == 6
    store.delete_file(scan.id, "school-a")
    store.delete_file(photo.id, "school-a")

    young = blob_gc.collect(store)  # everything is younger than the grace period
    assert (young.blobs, young.referenced, young.deleted, young.young) == (6, 1, 0, 5)
    age(tmp_path / "blobs", 2 * HOUR)
    dry = blob_gc.collect(store, dry_run=True)
    assert (dry.deleted, dry.young, dry.referenced) == (5, 0, 1) and on_disk(tmp_path) == before
    done = blob_gc.collect(store)
    assert (done.deleted, done.referenced, done.missing) == (5, 1, 0)
    assert done.deleted_bytes == dry.deleted_bytes > 0
    assert on_disk(tmp_path) == {kept_page}
    assert store.blobs.get(kept_page)  # the job's page is still there to grade
    assert blob_gc.collect(store).deleted == 0


def test_a_file_that_still_exists_keeps_its_bytes_and_pages(store, tmp_path):
    upload(store, scan_files.scanned_pdf(2), "class.pdf")
    age(tmp_path / "blobs", 2 * HOUR)
    out = blob_gc.collect(store)
    assert (out.blobs, out.referenced, out.deleted) == (3, 3, 0)


@pytest.mark.parametrize("how", ["put", "put_stream"])
def test_bytes_stored_again_are_refreshed_and_spared(store, tmp_path, how):
    """Another process stores bytes already stored (a page image, or an upload of the same scan)
    after they became old: their blob's time is refreshed, so a collection before its reference is
    committed keeps it."""
    data = scan_files.webp()
    key = store.blobs.put(data)
    age(tmp_path / "blobs", 2 * HOUR)
    other = BlobStore(str(tmp_path / "blobs"))  # a fresh process: it has not seen the key
    assert (other.put(data) if how == "put" else other.put_stream(io.BytesIO(data))[0]) == key
    out = blob_gc.collect(store)
    assert (out.deleted, out.young) == (0, 1) and store.blobs.has(key)


def test_bytes_stored_again_while_a_collection_marks_are_spared(store, tmp_path, monkeypatch):
    """The sweep checks each blob's time again: one listed as old, stored again by an upload while
    the references were being read, stays."""
    data = scan_files.webp()
    key = store.blobs.put(data)
    age(tmp_path / "blobs", 2 * HOUR)
    read = blob_gc.referenced_keys

    def marking_while_an_upload_arrives(engine):
        BlobStore(str(tmp_path / "blobs")).put(data)
        return read(engine)

    monkeypatch.setattr(blob_gc, "referenced_keys", marking_while_an_upload_arrives)
    out = blob_gc.collect(store)
    assert (out.deleted, out.young) == (0, 1) and store.blobs.has(key)


def test_a_process_that_saw_a_blob_recently_does_not_touch_it_again(tmp_path):
    now = [time.time()]
    blobs = BlobStore(str(tmp_path / "blobs"), clock=lambda: now[0])
    key = blobs.put(b"page")
    path = next(b.path for b in blobs.list())
    first = blobs.mtime(path)
    now[0] += REFRESH_S / 2
    blobs.put(b"page")
    assert blobs.mtime(path) == first  # seen less than REFRESH_S ago: no check, no write
    now[0] += REFRESH_S
    blobs.put(b"page")
    assert blobs.mtime(path) == pytest.approx(now[0])  # older than REFRESH_S: refreshed
    assert [b.key for b in blobs.list()] == [key]


def test_stale_temporary_files_go_and_fresh_ones_stay(store, tmp_path):
    (tmp_path / "blobs" / "tmp").mkdir(parents=True, exist_ok=True)
    (tmp_path / "blobs" / "tmp" / "old.tmp").write_bytes(b"half an upload")
    age(tmp_path / "blobs", 2 * HOUR)
    (tmp_path / "blobs" / "tmp" / "new.tmp").write_bytes(b"an upload in progress")
    (tmp_path / "blobs" / "README").write_text("not a blob: never listed, never deleted")
    out = blob_gc.collect(store)
    assert out.temporary_deleted == 1 and out.blobs == 0
    assert sorted(os.listdir(tmp_path / "blobs" / "tmp")) == ["new.tmp"]
    assert (tmp_path / "blobs" / "README").exists()


def test_a_grace_period_shorter_than_the_refresh_window_is_refused(store):
    with pytest.raises(ConfigError) as e:
        blob_gc.collect(store, grace_s=60)
    assert e.value.param == "grace_s" and "1200" in e.value.message


def test_the_command_line_collects_the_store_it_names(store, tmp_path, capsys):
    upload(store, scan_files.webp(), "photo.webp")
    for f in store.list_files("school-a")[0]:
        store.delete_file(f.id, "school-a")
    age(tmp_path / "blobs", 2 * HOUR)
    url = f"sqlite:///{tmp_path}/jobs.db"
    assert main(["blobs", "gc", "--store-url", url, "--dry-run"]) == 0
    assert "2 blobs" in capsys.readouterr().out and len(on_disk(tmp_path)) == 2
    assert main(["blobs", "gc", "--store-url", url]) == 0
    assert "deleted 2 (" in capsys.readouterr().out and not on_disk(tmp_path)


def test_on_a_filesystem_without_utime_the_same_bytes_are_rewritten(tmp_path):
    """Object stores (S3, GCS) cannot set a modification time: storing old bytes again rewrites
    them (pyarrow's SubTreeFileSystem stands in for one here: it is not a LocalFileSystem)."""
    from pyarrow import fs as pafs

    blobs = BlobStore(str(tmp_path / "blobs"))
    blobs._fs, blobs._root = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem()), "blobs"
    key = blobs.put(b"page")
    age(tmp_path / "blobs", 2 * HOUR)
    again = BlobStore(str(tmp_path / "blobs"))
    again._fs, again._root = blobs._fs, "blobs"
    assert again.put(b"page") == key
    (info,) = again.list()
    assert info.key == key and info.mtime > time.time() - 60 and again.get(key) == b"page"
    assert not [n for _, _, names in os.walk(tmp_path / "blobs") for n in names if n.endswith(".tmp")]
