"""Page images reach the grader by reference: a Grader replica reads a batch's stored pages
itself, unless they are in a folder on another node; then the batcher sends them from then on.
(The Serve classes' methods, called directly: no Ray cluster.)"""

from __future__ import annotations

import asyncio
import base64

import pytest

from raygrade.batch import BatchOutcome, GradeBatch
from raygrade.blobs import BlobStore
from raygrade.errors import StorageError
from raygrade.prompts import StudentWork
from raygrade.protocol import ImagePage, Question, StoredImage, Usage
from raygrade.serve.batcher import Batcher
from raygrade.serve.grader import Grader, PagesElsewhere, PagesFrom


def _batch(blobs: BlobStore, pages: list[bytes]) -> GradeBatch:
    stored = [StoredImage(sha256=blobs.put(p), media_type="image/png", width=10, height=10, size=len(p))
              for p in pages]
    return GradeBatch(batch_id="b1", job_id="j1", max_tokens=100, prompt_tokens_estimate=10,
                      questions=[Question(id="q1", prompt="p", max_score=1)],
                      students=[StudentWork(student_id=f"s{i}", alias=f"s{i + 1}", pages=[p], page_indices=[0],
                                            question_ids=["q1"]) for i, p in enumerate(stored)])


def _grader(node_id: str):
    """A Grader replica's page reading, without its provider (``__init__`` checks the provider)."""
    g = object.__new__(Grader.func_or_class)
    g._node_id, g._blobs = node_id, {}
    return g


def test_a_grader_reads_stored_pages_on_its_node_and_refuses_a_store_it_cannot_read(tmp_path):
    blobs = BlobStore(str(tmp_path / "blobs"))
    batch = _batch(blobs, [b"page one", b"page two"])
    g = _grader("node-a")
    read = asyncio.run(g._read_pages(batch, PagesFrom(blobs.location, "node-a")))
    assert [base64.b64decode(st.pages[0].data) for st in read.students] == [b"page one", b"page two"]
    assert all(isinstance(st.pages[0], ImagePage) for st in read.students)
    assert asyncio.run(g._read_pages(batch, None)) is batch  # pages already inline (or none stored)
    with pytest.raises(PagesElsewhere):
        asyncio.run(g._read_pages(batch, PagesFrom(blobs.location, "node-b")))
    (tmp_path / "not-a-folder").write_bytes(b"")  # a store this replica cannot open: the caller sends the pages
    with pytest.raises(PagesElsewhere, match="cannot open the blob store"):
        asyncio.run(g._read_pages(batch, PagesFrom(str(tmp_path / "not-a-folder" / "blobs"), "node-a")))
    (tmp_path / "blobs" / batch.students[1].pages[0].sha256[:2] / batch.students[1].pages[0].sha256).write_bytes(b"x")
    with pytest.raises(StorageError, match="corrupt"):  # checked against its SHA-256, as the batcher does
        asyncio.run(g._read_pages(batch, PagesFrom(blobs.location, "node-a")))


def test_the_batcher_sends_pages_itself_once_a_grader_is_on_another_node(tmp_path):
    blobs = BlobStore(str(tmp_path / "blobs"))
    batch = _batch(blobs, [b"page one"])
    calls: list[tuple[GradeBatch, PagesFrom | None]] = []
    graders = iter([_grader("node-a"), _grader("node-b"), _grader("node-a"), _grader("node-b")])  # Serve picks one

    class Method:
        async def remote(self, b: GradeBatch, pages_from: PagesFrom | None = None):
            calls.append((b, pages_from))
            b = await next(graders)._read_pages(b, pages_from)
            assert all(isinstance(st.pages[0], ImagePage) for st in b.students)
            return BatchOutcome(batch_id=b.batch_id, results=[], errors=[], usage=Usage(), calls=1), "r"

    class Handle:
        grade = Method()

    bat = object.__new__(Batcher.func_or_class)
    bat._graders_read_pages, bat._node_id, bat._blobs, bat._grader = True, "node-a", blobs, Handle()
    for _ in range(3):
        asyncio.run(bat._grade(batch))
    # Read by the replica on the folder's node; refused on the other node (nothing graded), sent
    # again with the pages inline, and inline from then on.
    assert [pf for _, pf in calls] == [PagesFrom(blobs.location, "node-a"), PagesFrom(blobs.location, "node-a"),
                                       None, None]
    assert [isinstance(b.students[0].pages[0], StoredImage) for b, _ in calls] == [True, True, False, False]
    assert not bat._graders_read_pages
