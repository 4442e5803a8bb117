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
    ([["Q", "R", "s", "a", "0.3"]], MAPPING,
     "grades.csv, line 2, column 'Score': score 0.3 is not on the grid (0 to 10 in steps of 0.5)"),
    ([["Q", "R", "s", "a", "11"]], MAPPING, "line 2, column 'Score': score 11 is not on the grid"),
    ([["Q", "R", "s", "a", "full"]], MAPPING, "line 2, column 'Score': score 'full' is not a number"),
    ([["Q", "R", "s", "a", "1"], ["Q", "", "t", "b", "1"], ["P", "", "t", "b", "1"]], MAPPING,
     "line 4: question 'q2' has no reference answer"),
    (rows(), {**MAPPING, "max_score": 10, "step": 3}, "line 2: max score 10 is not a multiple of the step 3"),
    ([["Q", "R", "s", "a", "1"], ["Q", "R", "t", "b"], ["Q", "R", "u", "c", "1"]], MAPPING,
     "grades.csv, line 3: 4 fields where the header has 5"),
    ([["Q", "R", "s", "a", "1"], ["Q", "R", "t", "b, c", "1", "2"]], MAPPING,
     "line 3: 6 fields where the header has 5"),
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
        "python -m raygrade.datasets: error: grades.csv, line 2, column 'Score': score 0.3 is not on the grid "
        "(0 to 1 in steps of 0.25)"]
    mapping = tmp_path / "map.yaml"
    mapping.write_text("question_col: Question\nreference_col: Reference\nanswer_col: Answer\nscore_col: Score\n"
                       "max_score: 1\nstep: 0.1\n")
    write_csv(src, [["Q", "R", "s", "a", "0.3"]])
    r = subprocess.run([sys.executable, "-m", "raygrade.datasets", "csv", str(src), str(tmp_path / "ds"),
                        "--mapping", str(mapping)], capture_output=True, text=True)
    assert r.returncode == 0 and "wrote 1 submissions" in r.stdout, r.stderr
    # Semicolons given on the command line (the sniffer would find them too), Latin-1 named.
    src.write_bytes("Question;Reference;Answer;Score\nQ;R;réponse;0.5\n".encode("latin-1"))
    r = subprocess.run([sys.executable, "-m", "raygrade.datasets", "csv", str(src), str(tmp_path / "ds4"),
                        "--mapping", str(mapping), "--delimiter", ";", "--encoding", "latin-1", "--step", "0.5"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "wrote 1 submissions" in r.stdout, r.stderr


def test_a_tab_separated_latin1_file_with_mixed_scales_in_one_pass(tmp_path):
    """Per-row max score and step columns (0–2 in whole points, 0–3 in halves), tab-separated and
    Latin-1 (an accented answer), delimiter sniffed, multi-line quoted answer: one pass, one dataset."""
    lines = ["Frage\tMusterlösung\tSchüler\tAntwort\tPunkte\tMax\tSchritt"]
    for i in range(10):
        lines.append(f"Was macht ARP?\tIP → MAC\tst{i}\tIP-Adresse zu MAC-Adresse für Gerät {i}\t{i % 3}\t2\t1")
        lines.append(f"Warum Drei-Wege-Handshake?\tSequenznummern\tst{i}\t\"Synchronisation,\nzwei Zeilen\"\t"
                     f"{(i % 7) * 0.5}\t3\t0.5")
    src = tmp_path / "noten.txt"
    src.write_bytes("\r\n".join(lines).replace("→", "->").encode("latin-1"))
    mapping = CsvMapping(question_col="Frage", reference_col="Musterlösung", answer_col="Antwort",
                         score_col="Punkte", student_col="Schüler", max_score_col="Max", step_col="Schritt",
                         encoding="latin-1", examples_share=0.2)
    a = load_assessment(str(csv_to_dataset(src, tmp_path / "ds", mapping)))
    assert [(q.max_score, q.score_step) for q in a.questions] == [(2, 1), (3, 0.5)]
    subs = pq.read_table(tmp_path / "ds" / "submissions").to_pylist()
    assert len(subs) == 16 and any("für Gerät" in s["page_texts"][0] for s in subs)
    assert any(s["page_texts"][0] == "Synchronisation,\nzwei Zeilen" for s in subs)
    scores = {json.loads(s["human_scores"])[s["question_ids"][0]] for s in subs if s["question_ids"] == ["q2"]}
    assert scores <= {i * 0.5 for i in range(7)} and len(scores) > 2

    # Read as UTF-8 (the default), the same file is one error naming its line and the fix.
    with pytest.raises(InvalidRequestError, match=r"noten.txt, line 1: not valid utf-8 text \(byte 0xf6\); give "
                       r"the file's encoding, e.g. --encoding latin-1"):
        csv_to_dataset(src, tmp_path / "ds2", mapping.model_copy(update={"encoding": "utf-8-sig"}))
    # A question whose rows disagree on its scale.
    bad = tmp_path / "bad.tsv"
    bad.write_text("Q\tR\tA\tS\tM\tT\nq\tr\ta\t1\t2\t1\nq\tr\tb\t1\t3\t1\n")
    with pytest.raises(InvalidRequestError, match=r"bad.tsv, line 3: question 'q1' has max score 3 in steps of 1 here "
                       r"but 2 in steps of 1 on line 2"):
        csv_to_dataset(bad, tmp_path / "ds3", CsvMapping(question_col="Q", reference_col="R", answer_col="A",
                                                         score_col="S", max_score_col="M", step_col="T"))


def test_the_mapping_needs_a_scale_and_a_known_encoding():
    from pydantic import ValidationError

    base = dict(question_col="Q", reference_col="R", answer_col="A", score_col="S")
    for extra, needle in (({"step": 1}, "give max_score, or max_score_col"),
                          ({"max_score": 2}, "give step, or step_col"),
                          ({"max_score": 2, "step": 1, "encoding": "latin-9x"}, "unknown encoding 'latin-9x'"),
                          ({"max_score": 2, "step": 1, "delimiter": ";;"}, "at most 1 character")):
        with pytest.raises(ValidationError, match=needle):
            CsvMapping(**base, **extra)
