"""The bulk layouts: submission rows in, result rows out, and turning rows into submissions.

The dataset layout is documented in :mod:`raygrade.bulk`; :mod:`raygrade.datasets` writes it.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from raygrade.errors import InvalidRequestError, RaygradeError
from raygrade.prompts import PROMPT_VERSION
from raygrade.protocol import Assessment, ImagePage, Submission, TextPage
from raygrade.scans import page_images

#: One row per submission (``DATASET/submissions/*.parquet``).
SUBMISSION_SCHEMA = pa.schema([
    ("submission_id", pa.string()), ("student_id", pa.string()), ("question_ids", pa.list_(pa.string())),
    ("page_images", pa.list_(pa.binary())), ("page_texts", pa.list_(pa.string())), ("human_scores", pa.string()),
])

#: One row per submission and question (``OUT/results/*.parquet`` and the staging files).
RESULT_SCHEMA = pa.schema([
    ("submission_id", pa.string()), ("student_id", pa.string()), ("question_id", pa.string()),
    ("score", pa.float64()), ("max_score", pa.float64()), ("feedback", pa.string()),
    ("confidence", pa.float64()), ("expected_error", pa.float64()), ("confidence_source", pa.string()),
    ("confidence_calibrated", pa.bool_()),
    ("baseline_agrees", pa.bool_()), ("needs_review", pa.bool_()), ("model", pa.string()),
    ("prompt_version", pa.string()), ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
    ("pages", pa.int64()), ("batch_id", pa.string()), ("error_type", pa.string()), ("error_message", pa.string()),
    ("run_id", pa.string()), ("graded_at", pa.string()),
    # a problem with the row's whole question (a JobWarning's type, e.g. degenerate_reference)
    ("warning", pa.string()),
])


def fs_and_path(uri: str):
    import pyarrow.fs as pafs

    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


def load_assessment(dataset: str) -> Assessment:
    """``DATASET/assessment.json`` as an :class:`Assessment`.

    Raises:
        FileNotFoundError: no ``assessment.json``.
        pydantic.ValidationError: it is not a valid assessment.
    """
    fs, root = fs_and_path(dataset)
    with fs.open_input_stream(f"{root}/assessment.json") as f:
        return Assessment.model_validate_json(f.read())


def submission_rows_to_jobs(rows: list[dict[str, Any]], assessment: Assessment
                            ) -> tuple[list[Submission], list[dict[str, Any]]]:
    """Turn dataset rows into :class:`Submission` s; rows that are not valid become error rows."""
    qids = {q.id for q in assessment.questions}
    subs, errors = [], []
    for r in rows:
        sid = str(r["submission_id"])
        wanted = list(r.get("question_ids") or []) or None
        try:
            if wanted and (unknown := set(wanted) - qids):
                raise InvalidRequestError(f"unknown question ids {sorted(unknown)}")
            images, texts = r.get("page_images"), r.get("page_texts")
            pages: list[ImagePage | TextPage]
            if images is not None and len(images):
                pages = [ImagePage(data=base64.b64encode(img).decode()) for img in _split_files(images)]
            elif texts is not None and len(texts):
                pages = [TextPage(text=str(t)) for t in texts]
            else:
                raise InvalidRequestError("submission has no pages")
            subs.append(Submission(student_id=sid, pages=pages, question_ids=wanted))
        except (RaygradeError, ValueError) as exc:
            etype = exc.error_type if isinstance(exc, RaygradeError) else InvalidRequestError.error_type
            msg = exc.message if isinstance(exc, RaygradeError) else "invalid submission row"
            errors.extend(error_rows(r, row_questions(r, assessment), etype, msg, assessment))
    return subs, errors


def _split_files(files) -> list[bytes]:
    """A row's page files split into page images (PDF, TIFF, HEIC, WebP: :mod:`raygrade.scans`).

    Raises:
        InvalidRequestError: a file in no accepted format, encrypted or corrupt (naming it).
    """
    images = []
    for k, raw in enumerate(files):
        try:
            images += page_images(bytes(raw))
        except ValueError as exc:
            raise InvalidRequestError(f"page_images[{k}]: {exc}") from None
    return images


def row_questions(row: dict[str, Any], assessment: Assessment) -> list[str]:
    """The question ids a dataset row answers (every question when it names none)."""
    return list(row.get("question_ids") or []) or [q.id for q in assessment.questions]


def error_rows(row: dict[str, Any], qids: Iterable[str], etype: str, msg: str, assessment: Assessment,
                batch_id: str | None = None) -> list[dict[str, Any]]:
    qmax = {q.id: q.max_score for q in assessment.questions}
    return [{"submission_id": str(row["submission_id"]), "student_id": str(row.get("student_id") or ""),
             "question_id": q, "score": None, "max_score": qmax.get(q), "feedback": None, "confidence": None,
             "expected_error": None, "confidence_source": None, "confidence_calibrated": False, "baseline_agrees": None,
             "needs_review": False, "model": None, "prompt_version": PROMPT_VERSION,
             "prompt_tokens": 0, "completion_tokens": 0, "pages": page_count(row), "batch_id": batch_id,
             "error_type": etype, "error_message": msg} for q in qids]


def page_count(row: dict[str, Any]) -> int:
    for col in ("page_images", "page_texts"):
        v = row.get(col)
        if v is not None and len(v):
            return len(v)
    return 0
