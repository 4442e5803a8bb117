"""The CSV export: the columns a gradebook import takes, final and model scores, and cells that
a spreadsheet would run as formulas neutralised."""

import csv
import io

from raygrade.export import CSV_COLUMNS, results_csv
from raygrade.protocol import GradeResult, GradingErrorItem, JobResults, JobState, TeacherReview, Usage


def _result(sid, qid, score, **kw):
    return GradeResult(student_id=sid, question_id=qid, score=score, max_score=2, feedback=kw.pop("feedback", "ok"),
                       confidence=0.8, pages=[0], model="m", batch_id="b", usage=Usage(), **kw)


def test_rows_columns_and_reviews():
    res = JobResults(id="job_1", state=JobState.PARTIAL, usage=Usage(), results=[
        _result("ada", "q1", 2, model_score=2, item_id="item_0"),
        _result("bob", "q1", 0.5, model_score=1.5, item_id="item_10000", graded_by="teacher", needs_review=True,
                review=TeacherReview(score=0.5, comment="only, half right", reviewed_by="key_ab",
                                     reviewed_at=1_764_806_400.0)),
    ], errors=[GradingErrorItem(student_ids=["cy"], question_ids=["q1", "q2"], type="output_parse_error",
                                message="bad")])
    rows = list(csv.DictReader(io.StringIO(results_csv(res))))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["student_id"], r["question_id"], r["score"], r["graded_by"], r["model_score"]) for r in rows] == [
        ("ada", "q1", "2", "model", "2"), ("bob", "q1", "0.5", "teacher", "1.5"),
        ("cy", "q1", "", "", ""), ("cy", "q2", "", "", "")]
    assert rows[1]["review_comment"] == "only, half right" and rows[1]["reviewed_by"] == "key_ab"
    assert rows[1]["reviewed_at"] == "2025-12-04T00:00:00+00:00" and rows[1]["needs_review"] == "true"
    assert rows[2]["error"] == "output_parse_error"


def test_formula_cells_are_neutralised():
    res = JobResults(id="job_1", state=JobState.SUCCEEDED, usage=Usage(), results=[
        _result("=HYPERLINK(\"http://x\")", "q1", 1, feedback="-1 for units; +2 otherwise"),
        _result("@sum", "q1", 1, feedback="fine")], errors=[])
    rows = list(csv.DictReader(io.StringIO(results_csv(res))))
    assert rows[0]["student_id"] == "'=HYPERLINK(\"http://x\")" and rows[0]["feedback"].startswith("'-1")
    assert rows[1]["student_id"] == "'@sum" and rows[1]["feedback"] == "fine"
