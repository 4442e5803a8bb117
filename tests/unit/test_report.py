"""The regrade report's agreement figures: the per-question QWK mean as the headline with an
interval over questions, pooled figures labelled pooled, an interval on every figure."""

import json

import pyarrow as pa
import pytest

from raygrade.bulk import RegradeConfig
from raygrade.bulk.report import build_report, write_report
from raygrade.bulk.schema import RESULT_SCHEMA
from raygrade.config import reference_similarity_provider
from raygrade.datasets import write_dataset
from raygrade.evaluation import grid_agreement
from raygrade.protocol import Assessment, Question

# Two questions on different grids; within each, the machine tracks the human loosely.
HUMAN = {"q1": [0, 1, 2, 2, 1, 0, 2, 1], "q2": [0, 0.5, 1, 1.5, 3, 2.5, 2, 0.5]}
MACHINE = {"q1": [0, 2, 2, 1, 1, 0, 2, 2], "q2": [0.5, 0.5, 1.5, 1.5, 2.5, 3, 1, 0]}


def test_the_report_leads_with_the_per_question_mean_and_brackets_every_figure(tmp_path):
    qs = [Question(id="q1", prompt="p1", reference_answer="r", max_score=2, score_step=1),
          Question(id="q2", prompt="p2", reference_answer="r", max_score=3, score_step=0.5)]
    subs = [{"submission_id": f"s{i}", "student_id": f"s{i}", "question_ids": ["q1", "q2"], "page_texts": ["a"],
             "human_scores": json.dumps({q: HUMAN[q][i] for q in HUMAN})} for i in range(8)]
    ds = write_dataset(tmp_path / "ds", Assessment(questions=qs), subs)
    rows = [{"submission_id": f"s{i}", "student_id": f"s{i}", "question_id": q, "score": float(MACHINE[q][i]),
             "max_score": 2.0 if q == "q1" else 3.0, "confidence": 0.5, "needs_review": False, "pages": 1,
             "prompt_tokens": 10, "completion_tokens": 5} for q in HUMAN for i in range(8)]
    table = pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)
    cfg = RegradeConfig(input=str(ds), output=str(tmp_path / "out"), provider=reference_similarity_provider())
    rep = build_report(table, cfg, Assessment(questions=qs), n_boot=200)

    g = rep["agreement_grid"]
    per_q = {q: grid_agreement([(h, m, 2 if q == "q1" else 3, 1 if q == "q1" else 0.5)
                                for h, m in zip(HUMAN[q], MACHINE[q])]).qwk for q in HUMAN}
    pq = g["qwk_per_question"]
    assert pq["questions"] == 2 and pq["value"] == pytest.approx(sum(per_q.values()) / 2)
    assert pq["lo"] <= pq["value"] <= pq["hi"]
    assert rep["per_question"]["q2"]["qwk"]["value"] == pytest.approx(per_q["q2"])
    figures = [g[m] for m in ("exact", "within_one_step", "qwk", "mae")]
    figures += [rep["agreement"][m] for m in ("exact", "within_one_point", "qwk", "kappa", "mae")]
    figures += [x[m] for x in rep["per_question"].values() for m in ("exact", "within_one_step", "qwk", "mae")]
    for fig in figures:
        assert set(fig) == {"value", "lo", "hi"} and fig["lo"] <= fig["value"] + 1e-12 <= fig["hi"] + 2e-12, fig
    assert rep["agreement"]["n"]["value"] == 16

    out = tmp_path / "out"
    out.mkdir()
    write_report(rep, table, out)
    md = (out / "report.md").read_text()
    assert f"QWK per question on its grid, mean: **{pq['value']:.3f} [{pq['lo']:.3f}, {pq['hi']:.3f}]** over 2 " in md
    assert "| exact | within one step | QWK (pooled) | MAE (of max) |" in md
    assert f"| q2 | 8 | {rep['per_question']['q2']['exact']['value']:.3f} [" in md


def test_a_question_the_baseline_cannot_grade_is_named_in_the_rows_and_the_report(tmp_path):
    """Issue 30: a degenerate reference (every example at one similarity) is a job warning online;
    in a bulk regrade its rows carry it and the report names the question."""
    from raygrade.baseline.similarity import ReferenceSimilarityGrader
    from raygrade.bulk.plan import BlockPlanner
    from raygrade.prompts import StudentWork
    from raygrade.protocol import GradedExample, TextPage
    from tests.unit.test_baseline import bow_embedder

    examples = [GradedExample(answer=f"answer number {i}", score=s) for i, s in enumerate([0, 1, 2] * 4)]
    qs = [Question(id="q1", prompt="p1", reference_answer="TCP headers", max_score=2, score_step=1),
          Question(id="q7", prompt="p7", reference_answer="zz", max_score=2, score_step=1, examples=examples)]
    subs = [{"submission_id": f"s{i}", "student_id": f"s{i}", "question_ids": ["q1", "q7"],
             "page_texts": ["TCP headers"], "human_scores": json.dumps({"q1": 2, "q7": 1})} for i in range(2)]
    ds = write_dataset(tmp_path / "ds", Assessment(questions=qs), subs)
    cfg = RegradeConfig(input=str(ds), output=str(tmp_path / "out"), provider=reference_similarity_provider())
    from raygrade.batch import GradeBatch

    students = [StudentWork(student_id=f"s{i}", alias=f"a{i}", pages=[TextPage(text="TCP headers")], page_indices=[0],
                            question_ids=["q1", "q7"]) for i in range(2)]
    batch = GradeBatch(batch_id="b1", job_id="j", questions=qs, students=students, prompt_tokens_estimate=0,
                       max_tokens=1)
    outcome = ReferenceSimilarityGrader(bow_embedder).grade_sync(batch)
    planner = BlockPlanner(cfg, Assessment(questions=qs), "run1")
    rows = planner.outcome_rows(batch, outcome, {s: {"submission_id": s, "page_texts": ["x"]} for s in ("s0", "s1")})
    assert {(r["question_id"], r["warning"]) for r in rows} == {("q1", None), ("q7", "degenerate_reference")}
    assert all(r["expected_error"] is not None for r in rows)

    table = pa.Table.from_pylist([{c: r.get(c) for c in RESULT_SCHEMA.names} for r in rows], schema=RESULT_SCHEMA)
    rep = build_report(table, cfg, Assessment(questions=qs), n_boot=50)
    assert rep["warnings"] == [{"type": "degenerate_reference", "question_ids": ["q7"]}]
    out = tmp_path / "out"
    out.mkdir()
    write_report(rep, table, out)
    assert "- **warning** degenerate_reference: question q7 (every graded example has the same similarity" in (
        out / "report.md").read_text()


@pytest.mark.parametrize("by", ["expected_error", "confidence"])
def test_the_regrades_review_cut_ranks_by_expected_error_or_confidence(tmp_path, by):
    """Staging files from an earlier raygrade (no expected_error column) still finalize: their
    rows rank by confidence."""
    import pyarrow.parquet as pq

    from raygrade.bulk.staging import finalize

    staging = tmp_path / "_staging"
    staging.mkdir()
    base = {"student_id": "", "max_score": 2.0, "needs_review": False, "pages": 1, "graded_at": "t"}
    rows = [dict(base, submission_id="a", question_id="q", score=1.0, confidence=0.5, expected_error=0.2),
            dict(base, submission_id="b", question_id="q", score=1.0, confidence=0.9, expected_error=0.8)]
    pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in RESULT_SCHEMA.names} for r in rows],
                                        schema=RESULT_SCHEMA), staging / "new.parquet")
    old = pa.Table.from_pylist([dict(base, submission_id="c", question_id="q", score=1.0, confidence=0.95)])
    pq.write_table(old.drop_columns(["needs_review"]).append_column("needs_review", pa.array([False])),
                   staging / "old.parquet")
    table = finalize(tmp_path, review_share=0.33, review_by=by)
    flagged = {r["submission_id"] for r in table.to_pylist() if r["needs_review"]}
    assert flagged == ({"b"} if by == "expected_error" else {"a"})
    assert {r["submission_id"]: r["expected_error"] for r in table.to_pylist()}["c"] is None
