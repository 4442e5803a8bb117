"""Uploaded files (the Files API) in the job store: each a row with its tenant, name, size and
the references of its page images (the bytes are in the blob store), and the resolution of a
job's file pages into those references when the job is accepted."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from raygrade.blobs import check_student_pages
from raygrade.errors import InvalidRequestError, NotFoundError
from raygrade.protocol import FileDeleted, FileObject, FilePage, GradingJob, StoredImage
from raygrade.store.schema import files


def _object(row) -> FileObject:
    return FileObject(id=row.id, bytes=row.bytes, created_at=int(row.created_at), filename=row.filename,
                      purpose=row.purpose, media_type=row.media_type, pages=row.page_count)


class Files:
    """File operations of :class:`raygrade.store.JobStore` (needs ``engine`` and ``_clock``).
    A file is its tenant's alone: another tenant's file id is as unknown as one that does not exist."""

    engine: sa.Engine
    _clock: Callable[[], float]
    _lock_quota: Callable[[Any, str], None]  # of raygrade.store.quotas.TenantQuotas
    _enforce_file_quota: Callable[[Any, str, int], None]

    def create_file(self, tenant: str, filename: str, size: int, sha256: str, media_type: str,
                    pages: list[StoredImage], purpose: str = "pages") -> FileObject:
        """Record an uploaded file whose bytes and page images are already in the blob store
        (:func:`raygrade.uploads.ingest`).

        Args:
            tenant: The uploader's tenant.
            filename: Its name (:func:`raygrade.uploads.clean_filename`).
            size: Bytes of the file; ``sha256``: its blob key; ``media_type``: what it is.
            pages: One reference per page image, in page order (at least one).

        Raises:
            InvalidRequestError: no page.
            QuotaExceededError: the tenant's ``file_bytes`` quota has no room for ``size`` bytes.
        """
        if not pages:
            raise InvalidRequestError(f"file {filename!r} holds no page", param="file")
        file_id, now = f"file-{uuid.uuid4().hex[:24]}", self._clock()
        with self.engine.begin() as conn:
            self._lock_quota(conn, tenant)
            self._enforce_file_quota(conn, tenant, size)
            conn.execute(files.insert().values(
                id=file_id, tenant=tenant, filename=filename, purpose=purpose, bytes=size, sha256=sha256,
                media_type=media_type, page_count=len(pages), created_at=now,
                pages=json.dumps([p.model_dump(mode="json") for p in pages])))
        return FileObject(id=file_id, bytes=size, created_at=int(now), filename=filename, purpose=purpose,
                          media_type=media_type, pages=len(pages))

    def _file_row(self, conn, file_id: str, tenant: str):
        row = conn.execute(sa.select(files).where(files.c.id == file_id, files.c.tenant == tenant)).first()
        if row is None:
            raise NotFoundError(f"no file with id {file_id!r}", param="file_id")
        return row

    def get_file(self, file_id: str, tenant: str) -> FileObject:
        """The tenant's file. Raises :class:`NotFoundError` for an unknown id (or another tenant's)."""
        with self.engine.connect() as conn:
            return _object(self._file_row(conn, file_id, tenant))

    def file_content(self, file_id: str, tenant: str) -> tuple[str, str, str]:
        """``(blob key, media type, file name)`` of the tenant's file as uploaded. Raises ``NotFoundError``."""
        with self.engine.connect() as conn:
            row = self._file_row(conn, file_id, tenant)
        return row.sha256, row.media_type, row.filename

    def file_pages(self, file_id: str, tenant: str) -> list[StoredImage]:
        """The references of the tenant's file's page images, in page order. Raises ``NotFoundError``."""
        with self.engine.connect() as conn:
            row = self._file_row(conn, file_id, tenant)
        return [StoredImage.model_validate(p) for p in json.loads(row.pages)]

    def list_files(self, tenant: str, *, limit: int = 20, after: str | None = None) -> tuple[list[FileObject], bool]:
        """The tenant's files, newest first: ``(up to limit files, whether more follow)``; ``after``
        is a file id from a previous page. Raises ``NotFoundError`` for an ``after`` not the tenant's."""
        q = sa.select(files).where(files.c.tenant == tenant)
        with self.engine.connect() as conn:
            if after is not None:
                a = self._file_row(conn, after, tenant)
                q = q.where(sa.or_(files.c.created_at < a.created_at,
                                   sa.and_(files.c.created_at == a.created_at, files.c.id < a.id)))
            rows = conn.execute(q.order_by(files.c.created_at.desc(), files.c.id.desc()).limit(limit + 1)).all()
        out = [_object(r) for r in rows]
        return out[:limit], len(out) > limit

    def delete_file(self, file_id: str, tenant: str) -> FileDeleted:
        """Forget the tenant's file: new jobs can no longer name it; jobs accepted before keep
        their pages. Its bytes, and the page images no job uses, go at the next collection of the
        blob store (:mod:`raygrade.store.blob_gc`). Raises ``NotFoundError``."""
        with self.engine.begin() as conn:
            if conn.execute(files.delete().where(files.c.id == file_id, files.c.tenant == tenant)).rowcount != 1:
                raise NotFoundError(f"no file with id {file_id!r}", param="file_id")
        return FileDeleted(id=file_id)

    def resolve_files(self, job: GradingJob, tenant: str) -> GradingJob:
        """``job`` with each :class:`FilePage` replaced by the page images it names (the page, or
        every page of the file in order); the job itself when it names no file.

        Raises:
            InvalidRequestError: a file that is not the tenant's (or no longer exists), a page the
                file does not have, or a student past :data:`raygrade.protocol.MAX_PAGES` pages (HTTP 400, naming
                the page).
        """
        named = job.file_pages()
        if not named:
            return job
        ids = {p.file_id for _, _, p in named}
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(files.c.id, files.c.pages).where(
                files.c.id.in_(sorted(ids)), files.c.tenant == tenant)).all()
        stored = {r.id: [StoredImage.model_validate(p) for p in json.loads(r.pages)] for r in rows}
        subs = list(job.submissions)
        for i, sub in enumerate(job.submissions):
            if not any(isinstance(p, FilePage) for p in sub.pages):
                continue
            pages = []
            for k, p in enumerate(sub.pages):
                if not isinstance(p, FilePage):
                    pages.append(p)
                    continue
                where = f"submissions[{i}].pages[{k}]"
                if p.file_id not in stored:
                    raise InvalidRequestError(f"{where}: no file with id {p.file_id!r}", param=f"{where}.file_id")
                held = stored[p.file_id]
                if p.page is not None and p.page > len(held):
                    raise InvalidRequestError(f"{where}: file {p.file_id} has {len(held)} page(s); no page {p.page}",
                                              param=f"{where}.page")
                pages.extend(held if p.page is None else [held[p.page - 1]])
            check_student_pages(i, len(pages))
            subs[i] = sub.model_copy(update={"pages": pages})
        return job.model_copy(update={"submissions": subs})
