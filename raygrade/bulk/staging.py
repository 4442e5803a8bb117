"""Staging, resume and the atomic output of a bulk regrade.

Every finished block is a Parquet file in ``OUT/_staging/`` (written under a temporary
name and renamed by the driver); a re-run skips what is graded there; ``OUT/results``
is written aside and renamed when the run is done.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raygrade.bulk.schema import RESULT_SCHEMA
from raygrade.review import ReviewBy, error_share, review_cut, risk

logger = logging.getLogger(__name__)


def read_staging(staging: Path) -> pa.Table:
    """Every complete staging file as one table; files cut short by a kill are deleted."""
    tables = []
    for f in sorted(staging.glob("*.parquet")) if staging.is_dir() else []:
        try:
            tables.append(pq.read_table(f, schema=RESULT_SCHEMA))
        except (pa.ArrowInvalid, OSError) as exc:
            logger.warning("discarding incomplete staging file %s (%s)", f.name, type(exc).__name__)
            f.unlink()
    return pa.concat_tables(tables) if tables else RESULT_SCHEMA.empty_table()


def completed_submissions(staged: pa.Table, retry_errors: bool = True) -> set[str]:
    """Submission ids already graded in ``staged`` (with ``retry_errors``: only those whose
    latest row for every question carries no error)."""
    rows = latest_rows(staged)
    ids = {r["submission_id"] for r in rows}
    if not retry_errors:
        return ids
    return ids - {r["submission_id"] for r in rows if r["error_type"]}


def latest_rows(staged: pa.Table) -> list[dict[str, Any]]:
    """One row per (submission, question): the newest graded row, else the newest error row."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for r in staged.to_pylist():
        k = (r["submission_id"], r["question_id"])
        cur = best.get(k)
        rank = (r["error_type"] is None, r["graded_at"] or "")
        if cur is None or rank > (cur["error_type"] is None, cur["graded_at"] or ""):
            best[k] = r
    return sorted(best.values(), key=lambda r: (r["submission_id"], r["question_id"]))


def finalize(out_dir: Path, review_share: float = 0.0, review_by: ReviewBy = "expected_error") -> pa.Table:
    """Write ``OUT/results`` from the staging files, atomically (write aside, then rename).

    Applies the review cut over the whole run: the ``review_share`` of the graded items most at
    risk (:func:`raygrade.review.risk` by ``review_by``) get ``needs_review``.
    """
    rows = latest_rows(read_staging(out_dir / "_staging"))
    graded = [i for i, r in enumerate(rows) if r["error_type"] is None]
    risks = [risk(r["confidence"], error_share(r["expected_error"], r["max_score"]), review_by)
             for r in (rows[i] for i in graded)]
    for i in review_cut(risks, review_share):
        rows[graded[i]]["needs_review"] = True
    table = pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)
    tmp = out_dir / f".results-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    pq.write_table(table, tmp / "part-00000.parquet")
    final = out_dir / "results"
    if final.exists():
        old = out_dir / f".results-old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return table
