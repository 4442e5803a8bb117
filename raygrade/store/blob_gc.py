"""Garbage collection of the blob store: ``raygrade blobs gc``.

Page images and uploaded files are content-addressed (:mod:`raygrade.blob_store`) and shared: the
same bytes serve every job and file that holds them, so deleting a file (``DELETE /v1/files/{id}``)
cannot delete its bytes at once. A collection is mark and sweep, as a container registry's:

1. **List** the blob store (every blob with its modification time), before anything is marked:
   a blob stored after the listing is not a candidate.
2. **Mark** every SHA-256 the job store references, in every namespace: job bodies and batch
   payloads (:class:`~raygrade.protocol.StoredImage` references) and files (the file's own bytes
   and its page images).
3. **Sweep** the unmarked blobs last modified before the grace period (default one hour) began,
   each checked again just before it goes, and temporary files interrupted writes left as old.

The grace period covers work between storing bytes and committing the row that references them
(an upload being split, a job being accepted): storing bytes already stored refreshes the blob's
modification time (:data:`raygrade.blob_store.REFRESH_S`), so the grace must exceed twice that.
One blob store must belong to one job store database (its namespaces included): a collection
sees only the references of the database it is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
from collections.abc import Callable, Iterable

import sqlalchemy as sa

from raygrade.blob_store import REFRESH_S, BlobInfo
from raygrade.errors import ConfigError
from raygrade.store.schema import batches, files, job_bodies

#: Default grace period, seconds: unreferenced blobs younger than this are kept.
DEFAULT_GRACE_S = 3600.0
_REF = re.compile(r'"sha256"\s*:\s*"([0-9a-f]{64})"')


@dataclasses.dataclass
class Collection:
    """What one collection found and did (``dry_run``: what it would have deleted).

    Attributes:
        blobs, blob_bytes: Blobs listed and their bytes.
        referenced: Listed blobs the job store references (kept).
        deleted, deleted_bytes: Unreferenced blobs removed (or to remove, in a dry run).
        young: Unreferenced blobs kept because they changed within the grace period (or their
            filesystem gives no modification time).
        temporary_deleted: Left-over temporary files removed.
        missing: Referenced keys with no blob (a blob store that lost data; reported, not repaired).
    """

    blobs: int = 0
    blob_bytes: int = 0
    referenced: int = 0
    deleted: int = 0
    deleted_bytes: int = 0
    young: int = 0
    temporary_deleted: int = 0
    missing: int = 0
    dry_run: bool = False

    def summary(self) -> str:
        """One line for the command line."""
        verb = "would delete" if self.dry_run else "deleted"
        return (f"{self.blobs} blobs ({self.blob_bytes} bytes): {self.referenced} referenced, {verb} "
                f"{self.deleted} ({self.deleted_bytes} bytes), kept {self.young} unreferenced within the grace "
                f"period; {verb} {self.temporary_deleted} stale temporary files; "
                f"{self.missing} referenced blobs missing")


def referenced_keys(engine: sa.Engine) -> set[str]:
    """Every blob key the job store references, in every namespace (streamed: no table is held
    in memory, only the keys)."""
    keys: set[str] = set()
    with engine.connect() as conn:
        for col in (job_bodies.c.body, batches.c.payload, files.c.pages):
            for (text,) in conn.execution_options(yield_per=200).execute(sa.select(col)):
                keys.update(_REF.findall(text))
        keys.update(k for (k,) in conn.execute(sa.select(files.c.sha256)))
    return keys


def collect(store, *, grace_s: float = DEFAULT_GRACE_S, dry_run: bool = False) -> Collection:
    """Delete the blobs of ``store`` (a :class:`raygrade.store.JobStore`) that nothing references
    and that have not changed for ``grace_s`` seconds (the steps are in the module's docstring).

    Raises:
        ConfigError: ``grace_s`` under twice :data:`raygrade.blob_store.REFRESH_S` (a blob being
            stored again could be collected before its reference is committed).
        StorageError: the blob store cannot be listed or a blob cannot be deleted.
    """
    if grace_s < 2 * REFRESH_S:
        raise ConfigError(f"the grace period must be at least {2 * REFRESH_S:.0f} s (twice the blob store's "
                          f"refresh interval); got {grace_s:g}", param="grace_s")
    blobs = store.blobs
    listed: list[BlobInfo] = list(blobs.list())
    marked = referenced_keys(store.engine)
    out = Collection(dry_run=dry_run)
    cutoff = blobs.clock() - grace_s
    for b in listed:
        if b.key is None:
            if b.mtime is not None and b.mtime < cutoff:
                out.temporary_deleted += 1
                if not dry_run:
                    blobs.delete(b.path)
            continue
        out.blobs += 1
        out.blob_bytes += b.size
        if b.key in marked:
            out.referenced += 1
        elif _old(blobs.mtime(b.path) if not dry_run else b.mtime, cutoff):
            out.deleted += 1
            out.deleted_bytes += b.size
            if not dry_run:
                blobs.delete(b.path)
        else:
            out.young += 1
    out.missing = sum(1 for k in marked - {b.key for b in listed} if not blobs.has(k))
    return out


def _old(mtime: float | None, cutoff: float) -> bool:
    return mtime is not None and mtime < cutoff


def add_parser(sub, parents: Iterable[argparse.ArgumentParser],
               open_store: Callable[[argparse.Namespace], object]) -> None:
    """``raygrade blobs gc``: collect the blob store of the job store ``open_store(args)`` opens."""
    b = sub.add_parser("blobs", help="the blob store of page images and uploaded files")
    bs = b.add_subparsers(dest="action", required=True)
    gc = bs.add_parser("gc", parents=list(parents),
                       help="delete blobs no job or file references (a deleted file's bytes, refused uploads)")
    gc.add_argument("--grace-s", type=float, default=DEFAULT_GRACE_S,
                    help="keep unreferenced blobs changed within this many seconds (default: %(default)s)")
    gc.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")
    b.set_defaults(fn=functools.partial(cmd_blobs, open_store=open_store))


def cmd_blobs(a: argparse.Namespace, open_store: Callable[[argparse.Namespace], object]) -> int:
    print(collect(open_store(a), grace_s=a.grace_s, dry_run=a.dry_run).summary())
    return 0
