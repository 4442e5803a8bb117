"""What the batch-API tests of each provider share: a regrade dataset with one-question and
two-question students, the items it must end with, a driver killed around a batch's creation, and
the result rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from raygrade.datasets import write_dataset
from raygrade.protocol import Assessment, Question

QUESTIONS = [Question(id="q1", prompt="What does ARP resolve?", max_score=2, score_step=0.5,
                      reference_answer="IP addresses to MAC addresses"),
             Question(id="q2", prompt="Why a three-way handshake?", max_score=1, reference_answer="sync sequence")]


def write_batch_dataset(folder: Path, n: int) -> Path:
    """``n`` students (every 7th answers q1 only) in the regrade layout, 50 rows per file."""
    rows = [{"submission_id": f"sub-{i:03d}", "student_id": f"st{i}", "page_texts": [f"answer number {i}"],
             "question_ids": ["q1"] if i % 7 == 0 else None} for i in range(n)]
    return write_dataset(folder, Assessment(questions=QUESTIONS), rows, rows_per_file=50)


def items(n: int) -> set[tuple[str, str]]:
    """Every (submission, question) the dataset of ``n`` students must end with."""
    return {(f"sub-{i:03d}", q) for i in range(n) for q in (["q1"] if i % 7 == 0 else ["q1", "q2"])}


def rows_of(out: Path) -> list[dict[str, Any]]:
    """The regrade's result rows."""
    return pq.read_table(out / "results").to_pylist()


class Killed(BaseException):
    """A driver killed without notice (SIGKILL): nothing catches it, nothing is cancelled."""


class DyingCreate:
    """An SDK's batches resource whose ``n``-th ``create`` kills the driver: after the batch is
    made (``after=True``) or before the request leaves (``after=False``); every other call passes."""

    def __init__(self, batches: Any, n: int, after: bool):
        self._batches, self._n, self._after = batches, n, after

    def create(self, **kw: Any) -> Any:
        self._n -= 1
        if self._n == 0 and not self._after:
            raise Killed("before create")
        made = self._batches.create(**kw)
        if self._n == 0:
            raise Killed("after create")
        return made

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batches, name)


def assert_all_graded(out: Path, n: int) -> list[dict[str, Any]]:
    """The run's results hold every item of the dataset of ``n`` students once, none in error; returns them."""
    rows = rows_of(out)
    assert sorted((r["submission_id"], r["question_id"]) for r in rows) == sorted(items(n))
    assert all(r["error_type"] is None for r in rows), [r["error_type"] for r in rows if r["error_type"]][:5]
    return rows


def stop_driver(seconds: float) -> None:
    """A poll's sleep that is ``ray job stop`` instead (SIGTERM becomes SystemExit in the driver)."""
    raise SystemExit(143)
