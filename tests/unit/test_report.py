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
