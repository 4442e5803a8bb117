"""Bring your own data: a file of graded answers (CSV, TSV, any delimiter) as a regrade dataset.

One row per answer: the question's text, its reference answer, the student's answer and the
human score (column names given by the caller, or in a small YAML mapping). Questions are keyed
by their text (or ``question_id_col``). Each question's scale is ``max_score`` and ``step``, or
read per row from ``max_score_col``/``step_col`` (a file mixing 0–2 and 0–3 questions needs no
split); every row of one question must agree on it. The delimiter is sniffed from the file's
start (``,``, ``;``, tab, ``|``) unless given; the encoding is UTF-8 (a BOM is skipped) unless
given, e.g. ``latin-1``. Per question, a seeded share of the answers becomes the question's graded
examples (what the baseline fits on and LLM prompts show) and the rest the submissions to grade,
each carrying its human score for the report's agreement figures. Every mistake is one
:class:`~raygrade.errors.InvalidRequestError` naming the line (the file's physical line, 1 = the
header) and the column.
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from raygrade.datasets.convert import write_dataset
from raygrade.errors import InvalidRequestError
from raygrade.protocol import Assessment, GradedExample, Question

#: Delimiters the sniffer chooses from.
SNIFF_DELIMITERS = ",;\t|"
#: Bytes of the file's start the sniffer reads.
SNIFF_BYTES = 64 * 1024


class CsvMapping(BaseModel):
    """Which columns hold what, the scale and the file's format (CLI flags or a YAML file with these keys).

    Attributes:
        question_col, reference_col, answer_col, score_col: Column names (required).
        question_id_col: A column with question ids (default: ids ``q1``, ``q2``… by first appearance).
        student_col: A column with student ids (default: the line number).
        max_score: The maximum score of every question, in points (or ``max_score_col``).
        step: The grid step, in points (or ``step_col``); a maximum must be a multiple of it.
        max_score_col: A column with each row's question's maximum score (wins over ``max_score``).
        step_col: A column with each row's question's grid step (wins over ``step``).
        delimiter: One character; ``None`` sniffs it from the file's start (``,`` when unsure).
        encoding: The file's text encoding (Python's codec names: ``utf-8``, ``latin-1``, ``cp1252``…).
        examples_share: Share of each question's answers used as graded examples (0–0.9).
        max_examples: At most this many examples per question.
        seed: Seed of the example split.

    Raises:
        pydantic.ValidationError: neither ``max_score`` nor ``max_score_col`` (or neither ``step``
            nor ``step_col``), a delimiter that is not one character, or an unknown encoding.
    """

    model_config = ConfigDict(extra="forbid")

    question_col: str
    reference_col: str
    answer_col: str
    score_col: str
    question_id_col: str | None = None
    student_col: str | None = None
    max_score: float | None = Field(default=None, gt=0, le=1000)
    step: float | None = Field(default=None, gt=0)
    max_score_col: str | None = None
    step_col: str | None = None
    delimiter: str | None = Field(default=None, min_length=1, max_length=1)
    encoding: str = "utf-8-sig"
    examples_share: float = Field(default=0.3, ge=0, le=0.9)
    max_examples: int = Field(default=50, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _scale_given(self) -> CsvMapping:
        if self.max_score is None and not self.max_score_col:
            raise ValueError("give max_score, or max_score_col for a column with each question's maximum")
        if self.step is None and not self.step_col:
            raise ValueError("give step, or step_col for a column with each question's grid step")
        import codecs

        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(f"unknown encoding {self.encoding!r}") from None
        return self


def _number(raw: str, where: str, what: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise InvalidRequestError(f"{where}: {what} {raw!r} is not a number") from None


def _scale(r: dict[str, str], where: str, m: CsvMapping) -> tuple[float, float]:
    max_score = (_number(r[m.max_score_col], f"{where}, column {m.max_score_col!r}", "max score")
                 if m.max_score_col else m.max_score)
    step = _number(r[m.step_col], f"{where}, column {m.step_col!r}", "step") if m.step_col else m.step
    assert max_score is not None and step is not None  # the mapping's validator
    if not 0 < max_score <= 1000 or step <= 0:
        raise InvalidRequestError(f"{where}: max score {max_score:g} and step {step:g} must be positive "
                                  "(max score at most 1000)", param=m.max_score_col or "max_score")
    if abs(max_score / step - round(max_score / step)) > 1e-6:
        raise InvalidRequestError(f"{where}: max score {max_score:g} is not a multiple of the step {step:g}",
                                  param=m.step_col or "step")
    return max_score, step


def _score(raw: str, where: str, max_score: float, step: float, m: CsvMapping) -> float:
    score = _number(raw, f"{where}, column {m.score_col!r}", "score")
    k = score / step
    if not 0 <= score <= max_score + 1e-9 or abs(k - round(k)) > 1e-6:
        raise InvalidRequestError(f"{where}, column {m.score_col!r}: score {raw} is not on the grid (0 to "
                                  f"{max_score:g} in steps of {step:g})", param=m.score_col)
    return round(round(k) * step, 6)


def _read_text(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InvalidRequestError(f"{path.name}, line {line}: not valid {encoding.removesuffix('-sig')} text "
                                  f"(byte {data[e.start]:#04x}); give the file's encoding, e.g. --encoding "
                                  "latin-1", param="encoding") from None


def _dialect(text: str, m: CsvMapping, path: Path) -> type[csv.Dialect] | csv.Dialect:
    if m.delimiter:
        class Given(csv.excel):
            delimiter = m.delimiter  # type: ignore[assignment]
        return Given
    if path.suffix.lower() in (".tsv", ".tab"):
        return csv.excel_tab
    try:
        return csv.Sniffer().sniff(text[:SNIFF_BYTES], delimiters=SNIFF_DELIMITERS)
    except csv.Error:  # one column, or nothing to tell the delimiters apart
        return csv.excel


def csv_to_dataset(path: str | Path, out: str | Path, m: CsvMapping) -> Path:
    """Write the regrade layout (``assessment.json``, ``submissions/*.parquet``) from a delimited text file.

    Raises:
        InvalidRequestError: text not in the given encoding (names the line), a mapped column
            missing, a line with more or fewer fields than the header, a score not a number or off
            its question's grid, rows of one question with different scales, a question without a
            reference answer, or a maximum that is not a multiple of its step.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    text = _read_text(path, m.encoding)
    reader = csv.reader(io.StringIO(text, newline=""), _dialect(text, m, path))
    try:
        cols = [c.strip() for c in next(reader, [])]
        wanted = [c for c in (m.question_col, m.reference_col, m.answer_col, m.score_col, m.question_id_col,
                              m.student_col, m.max_score_col, m.step_col) if c]
        if missing := [c for c in wanted if c not in cols]:
            raise InvalidRequestError(f"column {missing[0]!r} is not in {path.name} (its columns: "
                                      f"{', '.join(cols) or 'none'})", param=missing[0])
        rows: list[tuple[int, dict[str, str]]] = []
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue  # blank line
            if len(fields) != len(cols):
                raise InvalidRequestError(f"{path.name}, line {reader.line_num}: {len(fields)} fields where the "
                                          f"header has {len(cols)} (a delimiter or quote out of place?)")
            rows.append((reader.line_num, dict(zip(cols, fields))))
    except csv.Error as e:
        raise InvalidRequestError(f"{path.name}, line {reader.line_num}: {e}") from None
    questions: dict[str, dict[str, Any]] = {}
    for line, r in rows:
        where = f"{path.name}, line {line}"
        key = (r[m.question_id_col] if m.question_id_col else r[m.question_col]).strip()
        scale = _scale(r, where, m)
        q = questions.setdefault(key, {"id": key if m.question_id_col else f"q{len(questions) + 1}",
                                       "prompt": r[m.question_col].strip(), "reference": r[m.reference_col].strip(),
                                       "scale": scale, "line": line, "answers": []})
        if scale != q["scale"]:
            raise InvalidRequestError(
                f"{where}: question {q['id']!r} has max score {scale[0]:g} in steps of {scale[1]:g} here but "
                f"{q['scale'][0]:g} in steps of {q['scale'][1]:g} on line {q['line']}",
                param=m.max_score_col or m.step_col)
        student = (r[m.student_col].strip() if m.student_col else "") or f"row{line}"
        q["answers"].append((student, r[m.answer_col].strip(), _score(r[m.score_col], where, *scale, m)))
    rng = random.Random(m.seed)
    out_questions, subs = [], []
    for q in questions.values():
        if not q["reference"]:
            raise InvalidRequestError(f"{path.name}, line {q['line']}: question {q['id']!r} has no reference answer",
                                      param=m.reference_col)
        answers = list(q["answers"])
        rng.shuffle(answers)
        k = min(m.max_examples, int(len(answers) * m.examples_share))
        max_score, step = q["scale"]
        out_questions.append(Question(id=q["id"], prompt=q["prompt"], reference_answer=q["reference"],
                                      max_score=max_score, score_step=step,
                                      examples=[GradedExample(answer=a, score=s) for _, a, s in answers[:k] if a]))
        for student, answer, score in answers[k:]:
            subs.append({"submission_id": f"{q['id']}:{student}", "student_id": student, "question_ids": [q["id"]],
                         "page_texts": [answer or " "], "human_scores": json.dumps({q["id"]: score})})
    return write_dataset(out, Assessment(title=f"CSV {path.name}", questions=out_questions), subs)
