"""Bring your own data: a plain CSV of graded answers as a regrade dataset.

One row per answer: the question's text, its reference answer, the student's answer and the
human score (column names given by the caller, or in a small YAML mapping). Questions are keyed
by their text (or ``question_id_col``); all share ``max_score`` and the grid ``step``. Per
question, a seeded share of the answers becomes the question's graded examples (what the
baseline fits on and LLM prompts show) and the rest the submissions to grade, each carrying its
human score for the report's agreement figures.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from raygrade.datasets.convert import write_dataset
from raygrade.errors import InvalidRequestError
from raygrade.protocol import Assessment, GradedExample, Question


class CsvMapping(BaseModel):
    """Which CSV columns hold what, and the scale (CLI flags or a YAML file with these keys).

    Attributes:
        question_col, reference_col, answer_col, score_col: Column names (required).
        question_id_col: A column with question ids (default: ids ``q1``, ``q2``… by first appearance).
        student_col: A column with student ids (default: the row number).
        max_score: The maximum score of every question, in points.
        step: The grid step, in points (``max_score`` must be a multiple of it).
        examples_share: Share of each question's answers used as graded examples (0–0.9).
        max_examples: At most this many examples per question.
        seed: Seed of the example split.
    """

    model_config = ConfigDict(extra="forbid")

    question_col: str
    reference_col: str
    answer_col: str
    score_col: str
    question_id_col: str | None = None
    student_col: str | None = None
    max_score: float = Field(gt=0, le=1000)
    step: float = Field(gt=0)
    examples_share: float = Field(default=0.3, ge=0, le=0.9)
    max_examples: int = Field(default=50, ge=0)
    seed: int = 0


def _score(raw: str, n: int, m: CsvMapping) -> float:
    try:
        score = float(raw)
    except ValueError:
        raise InvalidRequestError(f"row {n}: score {raw!r} is not a number", param=m.score_col) from None
    k = score / m.step
    if not 0 <= score <= m.max_score + 1e-9 or abs(k - round(k)) > 1e-6:
        raise InvalidRequestError(f"row {n}: score {raw} is not on the grid (0 to {m.max_score:g} in steps of "
                                  f"{m.step:g})", param=m.score_col)
    return round(round(k) * m.step, 6)


def csv_to_dataset(path: str | Path, out: str | Path, m: CsvMapping) -> Path:
    """Write the regrade layout (``assessment.json``, ``submissions/*.parquet``) from a CSV file.

    Raises:
        InvalidRequestError: a mapped column is missing, a score is not a number or off the grid,
            a question has no reference answer, or ``max_score`` is not a multiple of ``step``.
        FileNotFoundError: no such file.
    """
    if abs(m.max_score / m.step - round(m.max_score / m.step)) > 1e-6:
        raise InvalidRequestError(f"max score {m.max_score:g} is not a multiple of the step {m.step:g}", param="step")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        wanted = [c for c in (m.question_col, m.reference_col, m.answer_col, m.score_col, m.question_id_col,
                              m.student_col) if c]
        if missing := [c for c in wanted if c not in cols]:
            raise InvalidRequestError(f"column {missing[0]!r} is not in {Path(path).name} (its columns: "
                                      f"{', '.join(cols) or 'none'})", param=missing[0])
        rows = list(reader)
    questions: dict[str, dict[str, Any]] = {}
    for n, r in enumerate(rows, 2):  # row 1 is the header
        key = (r[m.question_id_col] if m.question_id_col else r[m.question_col]).strip()
        q = questions.setdefault(key, {"id": key if m.question_id_col else f"q{len(questions) + 1}",
                                       "prompt": r[m.question_col].strip(), "reference": r[m.reference_col].strip(),
                                       "answers": []})
        student = (r[m.student_col].strip() if m.student_col else "") or f"row{n}"
        q["answers"].append((student, r[m.answer_col].strip(), _score(r[m.score_col].strip(), n, m)))
    rng = random.Random(m.seed)
    out_questions, subs = [], []
    for q in questions.values():
        if not q["reference"]:
            raise InvalidRequestError(f"question {q['id']!r} has no reference answer", param=m.reference_col)
        answers = list(q["answers"])
        rng.shuffle(answers)
        k = min(m.max_examples, int(len(answers) * m.examples_share))
        out_questions.append(Question(id=q["id"], prompt=q["prompt"], reference_answer=q["reference"],
                                      max_score=m.max_score, score_step=m.step,
                                      examples=[GradedExample(answer=a, score=s) for _, a, s in answers[:k] if a]))
        for student, answer, score in answers[k:]:
            subs.append({"submission_id": f"{q['id']}:{student}", "student_id": student, "question_ids": [q["id"]],
                         "page_texts": [answer or " "], "human_scores": json.dumps({q["id"]: score})})
    return write_dataset(out, Assessment(title=f"CSV {Path(path).name}", questions=out_questions), subs)
