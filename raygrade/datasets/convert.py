"""Writing datasets in the layout :mod:`raygrade.bulk` reads.

- :func:`saf_to_dataset`: SAF answers (``../shared/data/saf``) with their human scores,
  as typed text or as rendered handwriting-style page images.
- :func:`job_to_dataset`: an online grading job (the JSON body of ``POST /v1/jobs``) and
  its results (``GET /v1/jobs/{id}/results``, or the demo's results file) as a dataset
  whose ``human_scores`` are the online grades, so a regrade reports what changed.

CLI: ``python -m raygrade.datasets saf OUT [--images] [--split unseen_answers]`` and
``python -m raygrade.datasets job JOB.json OUT [--results RESULTS.json | --results URL]``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raygrade.bulk.schema import SUBMISSION_SCHEMA
from raygrade.protocol import Assessment, GradingJob, ImagePage, StoredImage, TextPage


def write_dataset(out: str | Path, assessment: Assessment, rows: list[dict[str, Any]], *,
                  rows_per_file: int = 256) -> Path:
    """Write ``assessment.json`` and ``submissions/part-*.parquet`` under ``out``.

    Args:
        rows: Dicts with the :data:`SUBMISSION_SCHEMA` columns (missing ones are null).
        rows_per_file: Rows per Parquet file (several files let Ray Data read in parallel).

    Raises:
        ValueError: duplicate ``submission_id`` s.
    """
    out = Path(out)
    ids = [r["submission_id"] for r in rows]
    if len(ids) != len(set(ids)):
        raise ValueError("submission_id values must be unique")
    (out / "submissions").mkdir(parents=True, exist_ok=True)
    (out / "assessment.json").write_text(assessment.model_dump_json(indent=2))
    for k in range(0, max(1, len(rows)), rows_per_file):
        chunk = rows[k:k + rows_per_file]
        table = pa.Table.from_pylist([{c: r.get(c) for c in SUBMISSION_SCHEMA.names} for r in chunk],
                                     schema=SUBMISSION_SCHEMA)
        pq.write_table(table, out / "submissions" / f"part-{k // rows_per_file:05d}.parquet")
    return out


def saf_to_dataset(root: Path, out: str | Path, *, split: str = "unseen_answers", lang: str = "english",
                   version: str = "1.0", images: bool = False, limit: int | None = None, examples: int = 3,
                   seed: int = 0) -> Path:
    """SAF answers as a regrade dataset, human scores included.

    ``split`` may name several splits, comma-separated (``unseen_answers,unseen_questions``).
    Questions carry up to ``examples`` graded answers from SAF's *training* split
    (never from the split being graded). With ``images``, each answer becomes
    handwriting-style page images (:func:`raygrade.datasets.render.render_pages`).

    Raises:
        FileNotFoundError: the SAF split is missing.
    """
    from raygrade.datasets.saf import grid_step, load_split
    from raygrade.datasets.sample_jobs import pick_examples
    from raygrade.protocol import Question

    rng = random.Random(seed)
    splits = [s.strip() for s in split.split(",") if s.strip()]
    test = [q for s in splits for q in load_split(root, s, lang, version) if q.answers]
    train = {q.key: q for q in load_split(root, "training", lang, version)} if "training" not in splits else {}
    questions: list[Question] = []
    rows: list[dict[str, Any]] = []
    for q in test:
        tr = train.get(q.key)
        step = grid_step([a.score for a in tr.answers], q.max_score) if tr else None  # the graders' grid
        questions.append(Question(id=q.key, prompt=q.text, reference_answer=q.reference or None,
                                  max_score=q.max_score, score_step=step, examples=pick_examples(tr, examples, rng)))
        for a in q.answers:
            if not a.response:
                continue
            rows.append({"submission_id": f"{q.key}:{a.id}", "student_id": a.id, "question_ids": [q.key],
                         "human_scores": json.dumps({q.key: a.score}), "page_texts": [a.response]})
    if limit is not None:
        rng.shuffle(rows)
        rows = sorted(rows[:limit], key=lambda r: str(r["submission_id"]))
        keep = {r["question_ids"][0] for r in rows}
        questions = [q for q in questions if q.id in keep]
    if images:  # rendered after the --limit cut: only the rows kept are drawn
        from raygrade.datasets.render import render_pages

        for r in rows:
            r["page_images"] = render_pages(r.pop("page_texts")[0], seed=rng.randrange(1 << 30),
                                            header=f"Q {r['question_ids'][0]}")
    assessment = Assessment(title=f"SAF {version} {'+'.join(splits)} ({lang})", questions=questions)
    return write_dataset(out, assessment, rows)


def job_to_dataset(job: GradingJob, out: str | Path, results: dict[str, Any] | None = None) -> Path:
    """An online job (and optionally its results) as a regrade dataset.

    ``results`` is a ``GET /v1/jobs/{id}/results`` body (or a file with a ``results``
    list of the same items); its scores become ``human_scores``, i.e. what the
    regrade's report compares against.
    """
    scores: dict[str, dict[str, float]] = {}
    items = (results or {}).get("results", [])
    if isinstance(items, dict):  # the demo's file: {"summary": ..., "results": <results body>}
        items = items.get("results", [])
    for r in items:
        scores.setdefault(r["student_id"], {})[r["question_id"]] = r["score"]
    rows = []
    for sub in job.submissions:
        if stored := [k for k, p in enumerate(sub.pages) if isinstance(p, StoredImage)]:
            raise ValueError(f"submission {sub.student_id} page {stored[0]} is a store reference; export the job "
                             "body as it was POSTed")
        imgs = [p.image_bytes() for p in sub.pages if isinstance(p, ImagePage)]
        texts = [p.text for p in sub.pages if isinstance(p, TextPage)]
        if imgs and texts:
            raise ValueError(f"submission {sub.student_id} mixes image and text pages; the Parquet layout "
                             "holds one kind per submission")
        rows.append({"submission_id": sub.student_id, "student_id": sub.student_id, "question_ids": sub.question_ids,
                     "page_images": imgs or None, "page_texts": texts or None,
                     "human_scores": json.dumps(scores[sub.student_id]) if sub.student_id in scores else None})
    return write_dataset(out, job.assessment, rows)
