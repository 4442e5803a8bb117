"""Bulk regrades with Ray Data: Parquet in, Parquet out, resumable, with a report.

Modules: :mod:`~raygrade.bulk.schema` (the dataset and result layouts, rows to submissions),
:mod:`~raygrade.bulk.udf` (the grading actors), :mod:`~raygrade.bulk.staging` (resume and the
atomic output), :mod:`~raygrade.bulk.pipeline` (:func:`run_regrade`), :mod:`~raygrade.bulk.report`.

Dataset layout (what :mod:`raygrade.datasets` writes and :func:`run_regrade` reads; schemas in
:mod:`raygrade.bulk.schema`)::

    DATASET/assessment.json          raygrade Assessment (questions, references, rubric, examples)
    DATASET/submissions/*.parquet    one row per submission:
        submission_id  string        unique; the resume key
        student_id     string
        question_ids   list<string>  null = every question
        page_images    list<binary>  PNG/JPEG pages in order   } one of the two
        page_texts     list<string>  typed or transcribed pages }
        human_scores   string        optional JSON {question_id: score} for the report

Output::

    OUT/results/*.parquet   one row per submission and question (RESULT_SCHEMA); appears
                            only when the run has finished (written aside, then renamed)
    OUT/_staging/           what finished blocks wrote while the run went on; a re-run
                            skips submissions graded there (a file cut short by a kill
                            fails to open and is discarded)
    OUT/report.json, report.md, confusion.png

Why not Ray Data's ``CheckpointConfig``: it needs an id column that is unique and
kept by every operator, and this pipeline turns one submission row into one row
per question; the staging files give the same resume at submission granularity.

Grading runs in an actor pool (:class:`~raygrade.bulk.udf.RegradeUDF`):
each block's submissions are read (OCR for text-only models), planned into
token-budgeted batches by the same planner as the online app, and graded at
``bulk`` priority through the cluster's rate-limiter actor, so a regrade never
overruns or starves online grading. A row or batch that fails becomes error rows
with the error's type; it never drops its block or fails the job.
"""

from __future__ import annotations

from raygrade.bulk.config import RegradeConfig
from raygrade.bulk.pipeline import RegradeSummary, run_regrade
from raygrade.bulk.schema import RESULT_SCHEMA, SUBMISSION_SCHEMA, load_assessment

__all__ = ["RESULT_SCHEMA", "SUBMISSION_SCHEMA", "RegradeConfig", "RegradeSummary", "load_assessment", "run_regrade"]
