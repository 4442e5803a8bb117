"""Bulk regrades through the Batch API against the fake Batch API on 127.0.0.1: one row per
item through error lines, invalid answers and an expired batch; kills at every step, then a
re-run that submits nothing twice (the fake's log is the judge). No Ray."""

import collections
import json

import pyarrow.parquet as pq
import pytest
from openai import OpenAI

from raygrade.bulk import RegradeConfig
from raygrade.bulk.config import BatchApiConfig
from raygrade.bulk.pipeline import run_batch_regrade
from raygrade.config import RateLimitConfig
from raygrade.datasets import write_dataset
from raygrade.protocol import Assessment, Question
from raygrade.testing.fake_openai import FakeBatchAPI, fake_provider_config

N = 210
QUESTIONS = [Question(id="q1", prompt="What does ARP resolve?", max_score=2, score_step=0.5,
                      reference_answer="IP addresses to MAC addresses"),
             Question(id="q2", prompt="Why a three-way handshake?", max_score=1, reference_answer="sync sequence")]


@pytest.fixture
def dataset(tmp_path):
    rows = [{"submission_id": f"sub-{i:03d}", "student_id": f"st{i}", "page_texts": [f"answer number {i}"],
             "question_ids": ["q1"] if i % 7 == 0 else None} for i in range(N)]
    return write_dataset(tmp_path / "ds", Assessment(questions=QUESTIONS), rows, rows_per_file=50)


def items():
    return {(f"sub-{i:03d}", q) for i in range(N) for q in (["q1"] if i % 7 == 0 else ["q1", "q2"])}


def config(dataset, out, api, **batch):
    provider = fake_provider_config(api.base_url, api_key_env="RAYGRADE_FAKE_KEY", price_per_mtok_input_usd=2.5,
                                    price_per_mtok_output_usd=10.0)
    return RegradeConfig(input=str(dataset), output=str(out), provider=provider, mode="batch-api",
                         submissions_per_block=40,
                         batch_api=BatchApiConfig(max_requests_per_file=12, poll_interval_s=0.01, **batch))


def run(cfg, api, client=None, sleep=None):
    client = client or OpenAI(base_url=api.base_url, api_key="sk-test")
    return run_batch_regrade(cfg, client=client, sleep=sleep or (lambda s: __import__("time").sleep(0.02)))


def assert_once(api):
    """Every file uploaded once, every input file in one batch, every exact request run once."""
    names = collections.Counter(u["filename"] for u in api.log["uploads"])
    inputs = collections.Counter(b["input_file_id"] for b in api.log["batches"])
    runs = collections.Counter(api.log["requests"])
    assert max(names.values()) == 1 and max(inputs.values()) == 1 and max(runs.values()) == 1, (names, inputs, runs)


def test_batch_mode_grades_every_item_once_through_errors_invalid_answers_and_expiry(tmp_path, dataset):
    api = FakeBatchAPI(expire_batches={2}, error_every=17, malformed_every=11).start()
    try:
        summary = run(config(dataset, tmp_path / "out", api), api)
    finally:
        api.stop()
    rows = pq.read_table(tmp_path / "out" / "results").to_pylist()
    assert sorted((r["submission_id"], r["question_id"]) for r in rows) == sorted(items())
    assert all(r["error_type"] is None for r in rows), collections.Counter(r["error_type"] for r in rows)
    assert_once(api)
    rounds = {b["batch_id"] for b in api.log["batches"]}
    assert len(rounds) > 3 and summary.report["mode"] == "batch-api" and set(summary.report["batch_ids"]) == rounds
    assert api.batches[api.log["batches"][1]["batch_id"]]["status"] == "expired"
    assert summary.report["price_factor"] == 0.5 and summary.report["cost_usd"] > 0
    scores = {(r["submission_id"], r["question_id"]): r["score"] for r in rows}
    assert all(0 <= s <= 2 for s in scores.values())


def test_items_that_never_succeed_end_as_typed_error_rows(tmp_path, dataset):
    api = FakeBatchAPI(error_every=1).start()  # every request fails
    try:
        run(config(dataset, tmp_path / "out", api, max_rounds=2), api)
    finally:
        api.stop()
    rows = pq.read_table(tmp_path / "out" / "results").to_pylist()
    assert len(rows) == len(items()) and {r["error_type"] for r in rows} == {"provider_error"}
    assert len(api.log["requests"]) == 2 * len({r["batch_id"].split("~")[0] for r in rows})  # two rounds


class Killed(BaseException):
    """A driver killed without notice (SIGKILL): nothing catches it, nothing is cancelled."""


class KillingClient:
    """The real client, except that the ``n``-th call to ``what`` is made and then the driver dies."""

    def __init__(self, api, what, n=1):
        self._c, self._what, self._n = OpenAI(base_url=api.base_url, api_key="sk-test"), what, n
        outer = self

        class Files:
            def create(self, **kw):
                return outer._maybe_die("upload", outer._c.files.create(**kw))

            def __getattr__(self, name):
                return getattr(outer._c.files, name)

        class Batches:
            def create(self, **kw):
                return outer._maybe_die("create", outer._c.batches.create(**kw))

            def __getattr__(self, name):
                return getattr(outer._c.batches, name)

        self.files, self.batches = Files(), Batches()

    def _maybe_die(self, what, result):
        if what == self._what:
            self._n -= 1
            if self._n == 0:
                raise Killed(what)
        return result


@pytest.mark.parametrize("what,n", [("upload", 1), ("upload", 3), ("create", 2), ("poll", 2)])
def test_a_killed_driver_resumes_without_submitting_anything_twice(tmp_path, dataset, what, n):
    api = FakeBatchAPI(per_request_s=0.002).start()
    cfg = config(dataset, tmp_path / "out", api)
    polls = [0]

    def dying_sleep(s):
        polls[0] += 1
        if what == "poll" and polls[0] == n:
            raise Killed("poll")

    try:
        with pytest.raises(Killed):
            run(cfg, api, client=KillingClient(api, what, n), sleep=dying_sleep)
        state = json.loads((tmp_path / "out" / "_batch_api" / "state.json").read_text())
        assert any(p["status"] != "collected" for p in state["parts"])
        run(cfg, api)  # the re-run: same OUT
        rows = pq.read_table(tmp_path / "out" / "results").to_pylist()
        assert sorted((r["submission_id"], r["question_id"]) for r in rows) == sorted(items())
        assert all(r["error_type"] is None for r in rows)
        assert_once(api)
        assert len(api.log["batches"]) == len(state["parts"])  # no batch for a part that had one
    finally:
        api.stop()


def test_stop_cancels_open_batches_and_a_rerun_finishes_them(tmp_path, dataset):
    """``ray job stop`` (SIGTERM → SystemExit in the driver) cancels what is open; the re-run
    sends the requests the cancelled batches did not run, once."""
    api = FakeBatchAPI(per_request_s=0.01).start()
    cfg = config(dataset, tmp_path / "out", api)

    def stop(s):
        raise SystemExit(143)

    try:
        with pytest.raises(SystemExit):
            run(cfg, api, sleep=stop)
        assert {b["status"] for b in api.batches.values()} <= {"cancelling", "cancelled", "completed"}
        stopped = [bid for bid, b in api.batches.items() if b["status"] in ("cancelling", "cancelled")]
        assert stopped
        run(cfg, api)
        assert {api.batches[bid]["status"] for bid in stopped} == {"cancelled"}  # as the API ends them
        rows = pq.read_table(tmp_path / "out" / "results").to_pylist()
        assert sorted((r["submission_id"], r["question_id"]) for r in rows) == sorted(items())
        assert all(r["error_type"] is None for r in rows)
        assert_once(api)
    finally:
        api.stop()


def test_the_enqueued_token_limit_holds_files_back(tmp_path, dataset):
    api = FakeBatchAPI(per_request_s=0.001).start()
    try:
        cfg = config(dataset, tmp_path / "out", api)
        run(cfg, api)
        biggest = max(b["tokens"] for b in api.log["batches"])
        api2 = FakeBatchAPI(per_request_s=0.001, max_enqueued_tokens=int(biggest * 1.5)).start()
        try:
            cfg2 = config(dataset, tmp_path / "out2", api2, max_enqueued_tokens=int(biggest * 1.5))
            run(cfg2, api2)
            assert all(b["status"] == "completed" for b in api2.batches.values())  # none failed for the limit
        finally:
            api2.stop()
    finally:
        api.stop()


def test_estimate_matches_what_the_provider_counts_and_the_run_sends(tmp_path, dataset, capsys):
    """``raygrade estimate``: the requests the run sends, and prompt tokens within 2 % of the fake
    API's count (tiktoken on the text parts plus its per-message overhead, as OpenAI counts)."""
    from raygrade.bulk.estimate import estimate
    from raygrade.testing.fake_openai import estimate_prompt_tokens

    api = FakeBatchAPI().start()
    try:
        cfg = config(dataset, tmp_path / "out", api)
        est = estimate(cfg)
        summary = run(cfg, api)
    finally:
        api.stop()
    sent = [json.loads(x) for f in sorted((tmp_path / "out" / "_batch_api").glob("r0-*.requests.jsonl"))
            for x in f.read_text().splitlines()]
    counted = sum(estimate_prompt_tokens(r["body"]["messages"]) for r in sent)
    assert est.requests == len(sent) == summary.report["estimate"]["requests"]
    assert est.max_completion_tokens == sum(r["body"]["max_tokens"] for r in sent)
    assert abs(est.prompt_tokens - counted) / counted < 0.02, (est.prompt_tokens, counted)
    assert est.image_tokens == 0 and est.submissions == N
    d = est.as_dict(2.5, 10.0, 0.5)
    assert d["usd_batch"]["total_at_most"] == pytest.approx(d["usd_sync"]["total_at_most"] / 2)

    from raygrade.cli import main

    provider = tmp_path / "provider.json"
    provider.write_text(cfg.provider.model_dump_json())
    assert main(["estimate", str(dataset), "--provider", str(provider), "--price-in", "2.5", "--price-out", "10"]) == 0
    out = capsys.readouterr()
    assert f"{N} submissions -> {est.requests} requests" in out.out and "USD batch" in out.out
    assert "warning" not in out.err
    # Without a price, a hosted model's USD figures are 0: said once on stderr.
    provider.write_text(cfg.provider.model_copy(update={"price_per_mtok_output_usd": 0.0}).model_dump_json())
    assert main(["estimate", str(dataset), "--provider", str(provider)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no price for" in err[0] and "--price-in" in err[0], err


def test_estimate_of_a_job_json(tmp_path):
    """``raygrade estimate JOB.json``: an online job's body priced the same way (its page images by
    the provider's image rule)."""
    from raygrade.bulk.estimate import estimate_job
    from raygrade.datasets.sample_jobs import sample_job

    job = tmp_path / "job.json"
    job.write_text(sample_job().model_dump_json())
    cfg = RegradeConfig(input=str(job), output="-", provider=fake_provider_config("http://127.0.0.1:9/v1"))
    est = estimate_job(job, cfg)
    assert est.submissions == len(sample_job().submissions) and est.requests >= 1
    assert 0 < est.image_tokens < est.prompt_tokens and est.unplanned_items == 0


def test_estimate_names_the_missing_extra_of_items_it_cannot_plan(tmp_path, monkeypatch, capsys):
    """A text-only model reads page images by OCR; without the ``ocr`` extra the estimate says so
    on stderr, naming the extra (it printed only "N items unplanned")."""
    import sys

    from raygrade.cli import main
    from raygrade.datasets.sample_jobs import sample_job

    monkeypatch.setitem(sys.modules, "rapidocr", None)  # import rapidocr -> ImportError, as without the extra
    job = tmp_path / "job.json"
    job.write_text(sample_job().model_dump_json())
    provider = tmp_path / "provider.json"
    provider.write_text(fake_provider_config("http://127.0.0.1:9/v1", supports_vision=False, image_token_rule="none",
                                             price_per_mtok_input_usd=1.0, price_per_mtok_output_usd=2.0
                                             ).model_dump_json())
    assert main(["estimate", str(job), "--provider", str(provider), "--reading-mode", "ocr"]) == 0
    out = capsys.readouterr()
    err = out.err.strip().splitlines()
    assert err and all("raygrade[ocr]" in line and "items cannot be graded" in line for line in err), err
    assert "items unplanned" in out.out


def test_estimate_prices_the_shared_prefix_read_from_the_cache_as_the_provider_reports_it(tmp_path, capsys):
    """A 1,500-token rubric prefix and 400 students: the requests a run sends (planned as the run
    plans them), sent to the fake OpenAI API, read their prefix from its prompt cache (≥ 1,024
    tokens, 128-token steps) on ≥ 90 % of requests after the first of each group of questions;
    ``raygrade estimate``'s cache reads are within 10 % of what it reports, and the cached price
    is below the uncached one by the discount on them."""
    import asyncio

    import httpx

    from raygrade.bulk.estimate import estimate, report
    from raygrade.bulk.plan import BlockPlanner
    from raygrade.bulk.schema import load_assessment
    from raygrade.grading import batch_request
    from raygrade.testing.fake_openai import FakeOpenAIServer

    rubric = "Award a point for naming the layer, another for the failure it prevents, none for a guess. " * 75
    questions = [Question(id="q1", prompt="What does ARP resolve?", max_score=2, reference_answer=rubric),
                 Question(id="q2", prompt="Why a three-way handshake?", max_score=1, reference_answer="sync seq")]
    rows = [{"submission_id": f"sub-{i:03d}", "student_id": f"st{i}", "page_texts": [f"answer number {i}"],
             "question_ids": ["q1"] if i % 7 == 0 else None} for i in range(400)]
    ds = write_dataset(tmp_path / "ds", Assessment(questions=questions), rows, rows_per_file=100)
    provider = fake_provider_config("http://127.0.0.1:9/v1", price_per_mtok_input_usd=2.5,
                                    price_per_mtok_output_usd=10.0, price_per_mtok_cache_read_usd=1.25)
    cfg = RegradeConfig(input=str(ds), output="-", provider=provider, submissions_per_block=100)
    est = estimate(cfg)
    assert est.cache_write_tokens > 0 and est.cache_read_tokens > 10 * est.cache_write_tokens

    blocks, stored = BlockPlanner(cfg, load_assessment(str(ds)), "t"), pq.read_table(f"{ds}/submissions").to_pylist()
    batches = [b for k in range(0, len(stored), 100) for b in asyncio.run(blocks.plan_rows(stored[k:k + 100]))[0]]
    assert len(batches) == est.requests
    chat = FakeOpenAIServer().start()
    try:
        with httpx.Client(base_url=chat.base_url, headers={"Authorization": "Bearer sk-test"}, timeout=30) as http:
            cached = []
            for b in batches:
                req = batch_request(b, b.students, max_tokens=b.max_tokens)
                body = {"model": "m", "messages": req.messages, "max_tokens": req.max_tokens}
                usage = http.post("/chat/completions", json=body).raise_for_status().json()["usage"]
                cached.append(usage["prompt_tokens_details"]["cached_tokens"])
    finally:
        chat.stop()
    groups = len({tuple(q.id for q in b.questions) for b in batches})
    assert sum(c > 0 for c in cached) >= 0.9 * (len(batches) - groups), cached
    assert abs(est.cache_read_tokens - sum(cached)) / sum(cached) < 0.10, (est.cache_read_tokens, sum(cached))

    d = est.as_dict(2.5, 10.0, 0.5, cache_read=1.25)
    saved = est.cache_read_tokens * (2.5 - 1.25) / 1e6
    assert d["usd_sync"]["prompt"] - d["usd_sync_cached"]["prompt"] == pytest.approx(saved)
    assert d["usd_batch_cached"]["prompt"] == pytest.approx(d["usd_sync_cached"]["prompt"] / 2)
    text, warnings = report(est, provider)
    assert "USD sync, cached" in text and "USD batch, cached" in text and "cache read 1.25" in text and not warnings
    assert "cached" not in report(est, provider.model_copy(update={"price_per_mtok_cache_read_usd": None}))[0]
    daily = provider.model_copy(update={"rate_limit": RateLimitConfig(rpd=20)})
    [warning] = report(est, daily)[1]
    assert f"{est.requests} requests are more than the provider's 20 a day" in warning
    assert "spans 3 quota days" in warning


def test_duplicate_submission_ids_are_refused_before_ray_or_the_provider_is_touched(tmp_path, monkeypatch):
    """The synchronous mode reads the ids in the driver: a dataset with a repeated
    ``submission_id`` is refused at once, no Ray cluster started, no Ray Data read and nothing
    written. (Ray may already be up in this xdist worker, so ``ray.init`` and the read are trapped.)"""
    import ray
    import ray.data

    def touched(*a, **k):
        raise AssertionError("Ray was touched before the ids were checked")

    monkeypatch.setattr(ray, "init", touched)
    monkeypatch.setattr(ray.data, "read_parquet", touched)
    from raygrade.bulk import run_regrade
    from raygrade.errors import InvalidRequestError

    rows = [{"submission_id": "sub-1", "student_id": "st1", "page_texts": ["an answer"], "question_ids": None}]
    ds = write_dataset(tmp_path / "ds", Assessment(questions=QUESTIONS), rows)
    part = next((ds / "submissions").glob("*.parquet"))  # write_dataset refuses duplicates: add one by hand
    (part.parent / "part-copy.parquet").write_bytes(part.read_bytes())
    cfg = RegradeConfig(input=str(ds), output=str(tmp_path / "out"),
                        provider=fake_provider_config("http://127.0.0.1:9/v1"))
    with pytest.raises(InvalidRequestError, match="unique"):
        run_regrade(cfg)
    assert not (tmp_path / "out" / "results").exists()
