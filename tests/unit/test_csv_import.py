"""``python -m raygrade.datasets csv``: a plain CSV of graded answers into the regrade layout, and
its mistakes as one-line errors."""

import csv
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from raygrade.bulk.schema import load_assessment
from raygrade.datasets.csv_import import CsvMapping, csv_to_dataset
from raygrade.errors import InvalidRequestError

HEADER = ["Question", "Reference", "Student", "Answer", "Score"]


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerows(rows)
    return path


def rows(n=20):
    out = []
    for q, ref in (("What does ARP resolve?", "IP addresses to MAC addresses"),
                   ("Why a three-way handshake?", "To synchronise sequence numbers")):
        out += [[q, ref, f"st{i}", f"answer {i}", str((i % 21) * 0.5)] for i in range(n)]
    return out


MAPPING = dict(question_col="Question", reference_col="Reference", answer_col="Answer", score_col="Score",
               student_col="Student", max_score=10, step=0.5)


def test_csv_becomes_a_dataset_with_seeded_examples_per_question(tmp_path):
    src = write_csv(tmp_path / "grades.csv", rows())
    out = csv_to_dataset(src, tmp_path / "ds", CsvMapping(**MAPPING, examples_share=0.3, seed=1))
    a = load_assessment(str(out))
    assert [q.id for q in a.questions] == ["q1", "q2"]
    assert all(q.max_score == 10 and q.score_step == 0.5 and len(q.examples) == 6 for q in a.questions)
    subs = pq.read_table(out / "submissions").to_pylist()
    assert len(subs) == 2 * 14
    for q in a.questions:  # an answer is an example or a submission, never both
        graded = {s["page_texts"][0] for s in subs if s["question_ids"] == [q.id]}
        assert len(graded) == 14 and not {e.answer for e in q.examples} & graded
    s = subs[0]
    assert json.loads(s["human_scores"])[s["question_ids"][0]] in [i * 0.5 for i in range(21)]
    again = csv_to_dataset(src, tmp_path / "ds2", CsvMapping(**MAPPING, examples_share=0.3, seed=1))
    assert load_assessment(str(again)) == a  # the split is seeded


@pytest.mark.parametrize("bad_rows,mapping,needle", [
    (rows(), {**MAPPING, "score_col": "Points"}, "column 'Points' is not in grades.csv (its columns: Question"),
    ([["Q", "R", "s", "a", "0.3"]], MAPPING, "row 2: score 0.3 is not on the grid (0 to 10 in steps of 0.5)"),
    ([["Q", "R", "s", "a", "11"]], MAPPING, "row 2: score 11 is not on the grid"),
    ([["Q", "R", "s", "a", "full"]], MAPPING, "row 2: score 'full' is not a number"),
    ([["Q", "", "s", "a", "1"]], MAPPING, "question 'q1' has no reference answer"),
    (rows(), {**MAPPING, "max_score": 10, "step": 3}, "max score 10 is not a multiple of the step 3"),
])
def test_csv_mistakes_are_one_clear_error(tmp_path, bad_rows, mapping, needle):
    src = write_csv(tmp_path / "grades.csv", bad_rows)
    with pytest.raises(InvalidRequestError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        csv_to_dataset(src, tmp_path / "ds", CsvMapping(**mapping))


def test_the_cli_prints_one_line_and_exits_2(tmp_path):
    src = write_csv(tmp_path / "grades.csv", [["Q", "R", "s", "a", "0.3"]])
    args = [sys.executable, "-m", "raygrade.datasets", "csv", str(src), str(tmp_path / "ds"), "--question-col",
            "Question", "--reference-col", "Reference", "--answer-col", "Answer", "--score-col", "Score",
            "--max-score", "1", "--step", "0.25"]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "python -m raygrade.datasets: error: row 2: score 0.3 is not on the grid (0 to 1 in steps of 0.25)"]
    mapping = tmp_path / "map.yaml"
    mapping.write_text("question_col: Question\nreference_col: Reference\nanswer_col: Answer\nscore_col: Score\n"
                       "max_score: 1\nstep: 0.1\n")
    write_csv(src, [["Q", "R", "s", "a", "0.3"]])
    r = subprocess.run([sys.executable, "-m", "raygrade.datasets", "csv", str(src), str(tmp_path / "ds"),
                        "--mapping", str(mapping)], capture_output=True, text=True)
    assert r.returncode == 0 and "wrote 1 submissions" in r.stdout, r.stderr
