"""A job's results as a gradebook takes them: CSV, one row per student × question.

Columns (:data:`CSV_COLUMNS`): the final score (a teacher's review replaces the model's), the
model's score beside it, who graded, the confidence and review flag, the reviewer's key id,
time (ISO 8601, UTC) and comment, the feedback, and for an item that could not be graded its
error type (score left empty). Text cells that a spreadsheet would run as a formula (starting
with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) are prefixed with ``'``, as OWASP's
CSV-injection guidance advises: student ids, comments and model feedback are untrusted.
"""

from __future__ import annotations

import csv
import datetime as dt
import io

from raygrade.protocol import JobResults

CSV_COLUMNS = ("student_id", "question_id", "score", "max_score", "graded_by", "model_score", "confidence",
               "needs_review", "reviewed_by", "reviewed_at", "review_comment", "feedback", "error")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _text(value: str | None) -> str:
    if not value:
        return ""
    return "'" + value if value.startswith(_FORMULA_START) else value


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def results_csv(results: JobResults) -> str:
    """``results`` as CSV text (RFC 4180, ``\\r\\n`` line ends, a header row of :data:`CSV_COLUMNS`):
    graded items in submission and question order, then one row per item of each error."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(CSV_COLUMNS)
    for r in results.results:
        review = r.review
        at = (dt.datetime.fromtimestamp(review.reviewed_at, dt.UTC).isoformat(timespec="seconds")
              if review else "")
        w.writerow([_text(r.student_id), _text(r.question_id), _number(r.score), _number(r.max_score), r.graded_by,
                    _number(r.model_score if r.model_score is not None else r.score), f"{r.confidence:.4f}",
                    "true" if r.needs_review else "false", _text(review.reviewed_by if review else None), at,
                    _text(review.comment if review else None), _text(r.feedback), ""])
    for e in results.errors:
        for sid in e.student_ids:
            for qid in e.question_ids:
                w.writerow([_text(sid), _text(qid), "", "", "", "", "", "false", "", "", "", "", _text(e.type)])
    return out.getvalue()
