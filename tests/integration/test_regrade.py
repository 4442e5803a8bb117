"""The bulk regrade pipeline on a small fixture: results, report figures, error rows,
resume after a kill (missing and cut-short staging files) and the atomic output."""

import json
import uuid

import pyarrow.parquet as pq
import pytest

from raygrade._optional import has_module
from raygrade.bulk import RegradeConfig, run_regrade
from raygrade.datasets import job_to_dataset, write_dataset
from raygrade.protocol import Assessment, GradingJob, Question
from raygrade.testing.fake_openai import fake_provider_config

QUESTIONS = [Question(id="q1", prompt="What does ARP resolve?", max_score=1, reference_answer="IP to MAC"),
             Question(id="q2", prompt="Why a three-way handshake?", max_score=1, reference_answer="sync sequence")]
# The fake server grades every item 0.5 (partial credit), confidence 0.8.
HUMAN = [0.5] * 6 + [1.0] * 4 + [0.0] * 2


@pytest.fixture
def dataset(tmp_path):
    rows = [{"submission_id": f"sub-{i:02d}", "student_id": f"st{i}", "question_ids": ["q1"],
             "page_texts": [f"answer number {i}"], "human_scores": json.dumps({"q1": HUMAN[i]})}
            for i in range(12)]
    return write_dataset(tmp_path / "ds", Assessment(questions=QUESTIONS), rows, rows_per_file=4)


def config(dataset, out, fake, **kw):
    provider = fake_provider_config(fake.base_url, name=f"rg-{uuid.uuid4().hex[:6]}", max_retries=0)
    return RegradeConfig(input=str(dataset), output=str(out), provider=provider, namespace="regrade-tests",
                         actors=1, submissions_per_block=4, **kw)


def results(out):
    return pq.read_table(out / "results").to_pylist()


def test_regrade_writes_one_row_per_item_and_reports_against_human_scores(ray_cluster, fake, dataset, tmp_path):
    out = tmp_path / "out"
    seen = []
    s = run_regrade(config(dataset, out, fake, review_share=0.25), progress=seen.append)
    assert [p["submissions_done"] for p in seen] == [4, 8, 12] and seen[-1]["submissions_total"] == 12
    assert seen[-1]["items"] == 12 and seen[-1]["items_failed"] == 0 and seen[0]["eta_s"] > 0
    rows = results(out)
    assert (s.submissions, s.skipped, s.graded_now, s.items, s.failed_items) == (12, 0, 12, 12, 0)
    assert sorted((r["submission_id"], r["question_id"]) for r in rows) == [(f"sub-{i:02d}", "q1") for i in range(12)]
    r0 = rows[0]
    assert r0["score"] == 0.5 and r0["confidence"] == 0.8 and r0["model"] == "fake-grader"
    assert r0["prompt_version"] and r0["prompt_tokens"] > 0 and r0["error_type"] is None and r0["pages"] == 1
    assert sum(r["needs_review"] for r in rows) == 3, "ceil(0.25 x 12) least confident items"
    rep = json.loads((out / "report.json").read_text())
    ag = rep["agreement"]
    assert rep["compared_with"] == "human scores" and ag["n"]["value"] == 12
    assert ag["exact"]["value"] == pytest.approx(6 / 12) and ag["within_one_point"]["value"] == 1.0
    assert ag["mae"]["value"] == pytest.approx((4 * 0.5 + 2 * 0.5) / 12)
    for fig in (ag["exact"], ag["qwk"], rep["agreement_grid"]["qwk"], rep["agreement_grid"]["mae"]):
        assert fig["lo"] <= fig["value"] <= fig["hi"], fig
    pq = rep["agreement_grid"]["qwk_per_question"]
    assert pq["questions"] == 1 and pq["value"] == pytest.approx(rep["per_question"]["q1"]["qwk"]["value"])
    assert rep["confusion"]["rows_reference_cols_new"] == [[0, 2, 0], [0, 6, 0], [0, 4, 0]]
    assert {abs(m["delta"]) for m in rep["moved_most"][:6]} == {0.5}
    assert rep["pages"] == 12 and rep["tokens_per_1k_pages"] > 0
    md = (out / "report.md").read_text()
    assert "Moved most" in md and "| partial | 0 | 6 | 0 |" in md
    assert "QWK per question on its grid, mean: **" in md and "| QWK (pooled) |" in md
    if has_module("matplotlib"):
        assert (out / "confusion.png").stat().st_size > 0
    else:  # pip install raygrade without the plots extra: the report says how to get the figure
        assert not (out / "confusion.png").exists() and "raygrade[plots]" in md
    assert len(fake.log) == 3, "12 students packed 4 per block, one request per block"


def test_one_free_cpu_is_enough_while_a_model_bundle_holds_the_rest(ray_cluster, fake, dataset, tmp_path):
    """Ray Data starts the grading actors before the read, whose ``ListFiles`` task needs a whole
    CPU. With every CPU but one held (as the embedded model's bundle holds one of a 2-CPU node's),
    the regrade still runs: the actors reserve no CPU (at 0.5 each, two of them took the last CPU
    and the read waited for ever)."""
    import threading

    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    held = ray.available_resources().get("CPU", 0) - 1
    pg = placement_group([{"CPU": held}]) if held > 0 else None
    done: dict = {}
    try:
        assert pg is None or pg.wait(timeout_seconds=60)
        t = threading.Thread(daemon=True, target=lambda: done.update(
            s=run_regrade(config(dataset, tmp_path / "out", fake).model_copy(update={"actors": 2}))))
        t.start()
        t.join(timeout=180)
    finally:
        if pg is not None:
            remove_placement_group(pg)  # a hung run would go on from here: the assertion below says so
    assert "s" in done, "the regrade did not finish with one free CPU"
    assert (done["s"].items, done["s"].failed_items) == (12, 0)


def test_failed_batches_are_error_rows_and_a_rerun_retries_only_them(ray_cluster, fake, dataset, tmp_path):
    out = tmp_path / "out"
    fake.script.extend(["500"])  # the first request fails (no retries configured)
    s = run_regrade(config(dataset, out, fake))
    assert s.items == 12 and s.failed_items == 4
    failed = [r for r in results(out) if r["error_type"]]
    assert {r["error_type"] for r in failed} == {"provider_error"} and all(r["score"] is None for r in failed)
    sent = len(fake.log)
    s2 = run_regrade(config(dataset, out, fake))
    assert (s2.skipped, s2.graded_now, s2.failed_items) == (8, 4, 0)
    assert len(fake.log) == sent + 1, "only the failed block is sent again"
    assert len(results(out)) == 12


def test_resume_after_a_kill_skips_finished_rows(ray_cluster, fake, dataset, tmp_path):
    out = tmp_path / "out"
    run_regrade(config(dataset, out, fake))
    before = {(r["submission_id"], r["question_id"]): r for r in results(out)}
    staged = sorted((out / "_staging").glob("*.parquet"))
    assert len(staged) == 3
    # A kill mid-run: one block never written, one file cut short mid-write.
    lost = set(pq.read_table(staged[0]).column("submission_id").to_pylist())
    cut = set(pq.read_table(staged[1]).column("submission_id").to_pylist())
    staged[0].unlink()
    staged[1].write_bytes(staged[1].read_bytes()[:100])
    fake.reset()
    s = run_regrade(config(dataset, out, fake))
    assert (s.skipped, s.graded_now) == (4, 8)
    assert len(fake.log) == 2, "only the two lost blocks are graded again"
    after = results(out)
    assert len(after) == 12 and len({(r["submission_id"], r["question_id"]) for r in after}) == 12
    regraded = {r["submission_id"] for r in after
                if r["run_id"] != before[(r["submission_id"], r["question_id"])]["run_id"]}
    assert regraded == lost | cut


def test_results_appear_only_when_complete(ray_cluster, fake, dataset, tmp_path):
    out = tmp_path / "out"
    fake.script.extend(["500"] * 50)  # nothing succeeds, yet the job finishes with error rows
    s = run_regrade(config(dataset, out, fake))
    assert s.failed_items == 12 and len(results(out)) == 12
    assert [p.name for p in out.iterdir() if p.name.startswith(".results")] == [], "no temporary folder left"


def test_job_export_round_trips_into_the_layout(tmp_path):
    job = GradingJob(assessment=Assessment(questions=QUESTIONS), submissions=[
        {"student_id": "a", "pages": [{"type": "text", "text": "IP to MAC"}], "question_ids": ["q1"]}])
    res = {"results": [{"student_id": "a", "question_id": "q1", "score": 1.0}]}
    path = job_to_dataset(job, tmp_path / "ds", {"summary": {}, "results": res})
    t = pq.read_table(path / "submissions").to_pylist()
    assert t[0]["page_texts"] == ["IP to MAC"] and json.loads(t[0]["human_scores"]) == {"q1": 1.0}
    assert Assessment.model_validate_json((path / "assessment.json").read_text()).questions[0].id == "q1"
