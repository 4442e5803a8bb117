"""Content-addressed page images: each accepted page's bytes stored once, outside the job rows.

The job store keeps references (:class:`raygrade.protocol.StoredImage`: SHA-256, media type,
pixel size) in job bodies and batch payloads, so leasing, completing and polling a job
never move or parse image bytes; a grader replica reads the bytes of the batch it grades
(:mod:`raygrade.serve.grader`).

Where the bytes live (``StoreConfig.blob_uri``): a folder (default: ``blobs/`` beside the
SQLite file, or ``$RAYGRADE_HOME/blobs``; on the head node, where the registry and the
batcher are placed), or any filesystem :func:`pyarrow.fs.FileSystem.from_uri` opens
(``s3://bucket/prefix``, ``gs://…``, ``hdfs://…``) for clusters whose replicas run
anywhere. Layout: ``<root>/<first two hex digits>/<sha256>``; writes go to a temporary
name and are moved into place, so a reader never sees half a file.

Blobs nothing references any more (a deleted file's, a refused upload's) are removed by
``raygrade blobs gc`` (:mod:`raygrade.store.blob_gc`), which spares a blob modified within its
grace period: storing bytes that are already stored refreshes the blob's modification time
(at most every :data:`REFRESH_S`), so a blob about to be referenced again is never collected.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import BinaryIO, NamedTuple

from pyarrow import fs as pafs

from raygrade.errors import StorageError

_KEY = re.compile(r"^[0-9a-f]{64}$")
#: Storing bytes already stored refreshes the blob's modification time when it is older than
#: this (seconds); a process skips the check for a key it refreshed or wrote more recently.
REFRESH_S = 600.0


class BlobInfo(NamedTuple):
    """One file under the blob store's root (:meth:`BlobStore.list`): ``key`` (the SHA-256, or
    ``None`` for a temporary file a write left behind), ``path``, ``size`` in bytes and ``mtime``
    (Unix seconds; ``None`` where the filesystem does not say)."""

    key: str | None
    path: str
    size: int
    mtime: float | None


def _timestamp(info: pafs.FileInfo) -> float | None:
    """A file's modification time in Unix seconds (``None`` where the filesystem does not say)."""
    return info.mtime.timestamp() if info.mtime is not None else None


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
        clock: Wall clock, Unix seconds (injected in tests; blobs' modification times are compared with it).

    Raises:
        StorageError: the location cannot be opened or created.
    """

    def __init__(self, uri: str, *, clock: Callable[[], float] = time.time):
        self.uri = uri
        self.clock = clock
        try:
            if "://" in uri:
                self._fs, root = pafs.FileSystem.from_uri(uri)
            else:
                self._fs, root = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
            self._fs.create_dir(root, recursive=True)
        except Exception as exc:  # pyarrow raises OSError / ArrowInvalid with the cause
            raise StorageError(f"blob store {uri!r} cannot be opened: {type(exc).__name__}", param="blob_uri") from exc
        self._root = root.rstrip("/")
        # key -> when its blob was last known fresh (written or refreshed here, or its mtime): a put
        # within REFRESH_S of that skips the existence check and the refresh.
        self._fresh: dict[str, float] = {}

    @property
    def location(self) -> str:
        """The URI that opens this store from another process: a folder's absolute path (a
        relative one depends on the working directory), any other URI as given."""
        return self.uri if "://" in self.uri else self._root

    def _path(self, key: str) -> str:
        if not _KEY.match(key):
            raise StorageError(f"not a blob key: {key[:80]!r}", param="sha256")
        return f"{self._root}/{key[:2]}/{key}"

    def _settle(self, key: str, path: str, place: Callable[[str], None]) -> bool:
        """Put the blob ``key`` at ``path``: ``place(path)`` writes it there when the blob is new,
        or when the filesystem cannot touch an old blob's modification time (object stores:
        rewriting the same bytes refreshes it). Returns whether ``place`` was called."""
        now = self.clock()
        if now - self._fresh.get(key, -REFRESH_S) < REFRESH_S:
            return False
        info = self._fs.get_file_info(path)
        exists, mtime = info.type != pafs.FileType.NotFound, _timestamp(info)
        if exists and mtime is not None and now - mtime < REFRESH_S:
            self._fresh[key] = mtime
            return False
        placed = not (exists and isinstance(self._fs, pafs.LocalFileSystem))
        if placed:
            self._fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            place(path)
        else:
            os.utime(path, (now, now))
        self._fresh[key] = now
        return placed

    def put(self, data: bytes) -> str:
        """Store ``data`` once (an existing blob is not rewritten, but its modification time is
        refreshed when older than :data:`REFRESH_S`); returns its SHA-256 hex key.

        Raises:
            StorageError: the write failed.
        """
        key = hashlib.sha256(data).hexdigest()

        def write(path: str) -> None:  # to a temporary name, then moved: no reader sees half a file
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with self._fs.open_output_stream(tmp) as f:
                f.write(data)
            self._fs.move(tmp, path)

        try:
            self._settle(key, self._path(key), write)
        except Exception as exc:
            raise StorageError(f"could not store a page image: {type(exc).__name__}", param="blob_uri") from exc
        return key

    def put_stream(self, src: BinaryIO, chunk: int = 1 << 20) -> tuple[str, int]:
        """Store the bytes read from ``src`` (to its end), ``chunk`` bytes at a time: never the whole
        file in memory. Returns ``(SHA-256 hex key, size in bytes)``; an existing blob is kept
        (its modification time refreshed as by :meth:`put`).

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
            if not self._settle(key, self._path(key), lambda path: self._fs.move(tmp, path)):
                self._fs.delete_file(tmp)
        except Exception as exc:
            if self._fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                self._fs.delete_file(tmp)
            raise StorageError(f"could not store an uploaded file: {type(exc).__name__}", param="blob_uri") from exc
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
        return data

    def list(self) -> Iterator[BlobInfo]:
        """Every file under the root: blobs (``key`` set) and temporary files that interrupted
        writes left (``key`` ``None``); other files are not listed.

        Raises:
            StorageError: the root cannot be listed.
        """
        try:
            infos = self._fs.get_file_info(pafs.FileSelector(self._root, recursive=True, allow_not_found=True))
        except Exception as exc:
            raise StorageError(f"could not list the blob store: {type(exc).__name__}", param="blob_uri") from exc
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            name = info.base_name
            key = name if _KEY.match(name) and info.path.endswith(f"/{name[:2]}/{name}") else None
            if key is None and not name.endswith(".tmp"):
                continue
            yield BlobInfo(key, info.path, info.size or 0, _timestamp(info))

    def has(self, key: str) -> bool:
        """Whether a blob is stored under ``key``. Raises ``StorageError`` for a malformed key."""
        return self._fs.get_file_info(self._path(key)).type != pafs.FileType.NotFound

    def mtime(self, path: str) -> float | None:
        """The modification time of ``path`` (a :meth:`list` entry), Unix seconds; ``None`` if it is
        gone or the filesystem does not say."""
        info = self._fs.get_file_info(path)
        return None if info.type == pafs.FileType.NotFound else _timestamp(info)

    def delete(self, path: str) -> None:
        """Remove ``path`` (a :meth:`list` entry); one already gone is no error.

        Raises:
            StorageError: the file could not be removed.
        """
        try:
            self._fs.delete_file(path)
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise StorageError(f"could not delete a blob: {type(exc).__name__}", param="blob_uri") from exc
        name = path.rsplit("/", 1)[-1]
        self._fresh.pop(name, None)
