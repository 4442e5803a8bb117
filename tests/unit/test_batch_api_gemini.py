"""Bulk regrades through Gemini's batch mode, with the official ``google-genai`` SDK against the
fake batch mode on 127.0.0.1: one row per item through request errors, malformed answers and an
expired job; a driver killed around a job's creation resumes without creating it twice (found by
its display name); ``ray job stop`` cancels; parts stay under the inline-request limit, and a
part over it goes as an input file through the Files API. The fake's log is the judge. No Ray."""

import collections
import json
from types import SimpleNamespace

import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from support.batch_runs import (
    DyingCreate,
    Killed,
    assert_all_graded,
    items,
    rows_of,
    stop_driver,
    write_batch_dataset,
)

from raygrade.bulk import RegradeConfig
from raygrade.bulk.config import BatchApiConfig
from raygrade.bulk.pipeline import run_batch_regrade
from raygrade.config import ProviderConfig
from raygrade.providers.gemini_batches import GeminiBatches
from raygrade.testing.fake_gemini_batches import FakeGeminiBatches

N = 150


@pytest.fixture
def dataset(tmp_path):
    return write_batch_dataset(tmp_path / "ds", N)


def config(dataset, out, api, **batch):
    provider = ProviderConfig(name="gemini", kind="gemini", base_url=api.base_url, api_key_env="RAYGRADE_FAKE_KEY",
                              model="gemini-fake", price_per_mtok_input_usd=0.3, price_per_mtok_output_usd=2.5)
    return RegradeConfig(input=str(dataset), output=str(out), provider=provider, mode="batch-api",
                         submissions_per_block=40,
                         batch_api=BatchApiConfig(**{"max_requests_per_file": 12, "poll_interval_s": 0.01, **batch}))


def client(api):
    return genai.Client(api_key="sk-test", http_options=types.HttpOptions(base_url=api.base_url))


def run(cfg, api, sdk=None, sleep=None):
    return run_batch_regrade(cfg, client=sdk or client(api), sleep=sleep or (lambda s: __import__("time").sleep(0.02)))



def assert_once(api):
    """Every request in one batch only, every request run once."""
    sent = collections.Counter(c for b in api.batch_log["batches"] for c in b["keys"])
    ran = collections.Counter(api.batch_log["requests"])
    assert max(sent.values()) == 1 and max(ran.values()) == 1, (sent.most_common(2), ran.most_common(2))


def test_every_item_is_graded_once_through_request_errors_malformed_answers_and_an_expired_job(tmp_path, dataset):
    api = FakeGeminiBatches(api_key="sk-test", expire_batches={2}, error_every=13, malformed_every=11).start()
    try:
        summary = run(config(dataset, tmp_path / "out", api, max_rounds=5), api)
    finally:
        api.stop()
    rows = assert_all_graded(tmp_path / "out", N)
    assert all(0 <= r["score"] <= (2 if r["question_id"] == "q1" else 1) for r in rows)
    assert_once(api)
    made = [b["name"] for b in api.batch_log["batches"]]
    assert api.jobs[made[1]]["metadata"]["state"] == "BATCH_STATE_EXPIRED"
    assert len(made) > 3 and set(summary.report["batch_ids"]) == set(made)  # 2 parts in round 0, then retries
    assert summary.report["price_factor"] == 0.5 and summary.report["cost_usd"] > 0


def test_requests_that_never_succeed_end_as_typed_error_rows(tmp_path, dataset):
    api = FakeGeminiBatches(api_key="sk-test", error_every=1).start()
    try:
        run(config(dataset, tmp_path / "out", api, max_rounds=2), api)
    finally:
        api.stop()
    rows = rows_of(tmp_path / "out")
    assert len(rows) == len(items(N)) and {r["error_type"] for r in rows} == {"provider_error"}
    assert {r["error_message"] for r in rows} == {"13: Internal error encountered."}
    assert len(api.batch_log["requests"]) == 2 * len({r["batch_id"].split("~")[0] for r in rows})  # two rounds


def killing_client(api, n, after):
    """The SDK's client whose ``n``-th ``batches.create`` kills the driver (:class:`DyingCreate`)."""
    sdk = client(api)
    return SimpleNamespace(batches=DyingCreate(sdk.batches, n, after), files=sdk.files, _api_client=sdk._api_client,
                           client=sdk)  # held: the SDK closes its
    # HTTP client when the Client is collected


@pytest.mark.parametrize("n,after", [(1, True), (3, True), (3, False)])
def test_a_driver_killed_around_a_creation_resumes_without_creating_a_job_twice(tmp_path, dataset, n, after):
    api = FakeGeminiBatches(api_key="sk-test", per_request_s=0.001).start()
    cfg = config(dataset, tmp_path / "out", api, max_requests_per_file=6)
    try:
        with pytest.raises(Killed):
            run(cfg, api, sdk=killing_client(api, n, after))
        state = json.loads((tmp_path / "out" / "_batch_api" / "state.json").read_text())
        assert state["parts"][n - 1]["status"] == "creating" and state["parts"][n - 1]["batch_id"] is None
        run(cfg, api)
        assert_all_graded(tmp_path / "out", N)
        assert_once(api)
        assert len(api.batch_log["batches"]) == len(state["parts"])  # one job per part, no more
        after_run = json.loads((tmp_path / "out" / "_batch_api" / "state.json").read_text())
        assert {p["round"] for p in after_run["parts"]} == {0}, "a part adopted a job not its own"
    finally:
        api.stop()


def test_stop_cancels_open_jobs_and_a_rerun_sends_their_requests_again_once(tmp_path, dataset):
    api = FakeGeminiBatches(api_key="sk-test", per_request_s=0.01).start()
    cfg = config(dataset, tmp_path / "out", api)
    try:
        with pytest.raises(SystemExit):
            run(cfg, api, sleep=stop_driver)
        states = {j["metadata"]["state"] for j in api.jobs.values()}
        assert "BATCH_STATE_CANCELLED" in states and states <= {"BATCH_STATE_CANCELLED", "BATCH_STATE_SUCCEEDED"}
        run(cfg, api)
        assert_all_graded(tmp_path / "out", N)
        sent = collections.Counter(k for b in api.batch_log["batches"] for k in b["keys"])
        assert max(sent.values()) == 1, "the cancelled jobs' requests go again under their next round's keys"
        assert max(collections.Counter(api.batch_log["requests"]).values()) == 1
    finally:
        api.stop()


def test_parts_are_cut_at_the_backends_limit_and_inline_jobs_stay_under_the_apis(tmp_path, dataset, monkeypatch):
    """Parts are cut at the backend's limit (the Files API's 2 GB a file) and Gemini takes at most
    20 MB of inline requests per job (both shrunk here, with the fake's, so that 40-student
    requests need several inline jobs)."""
    api = FakeGeminiBatches(api_key="sk-test", max_inline_bytes=12_000).start()
    monkeypatch.setattr(GeminiBatches, "max_part_bytes", 9_000)
    monkeypatch.setattr(GeminiBatches, "inline_max_bytes", 9_000)
    try:
        run(config(dataset, tmp_path / "out", api), api)
        sdk = client(api)  # (held: the SDK closes its HTTP client when the Client is collected)
        with pytest.raises(genai_errors.ClientError, match="payload size exceeds"):
            sdk.batches.create(model="gemini-fake", src=[types.InlinedRequest(
                contents="x" * 13_000, metadata={"key": "too-big"})])
    finally:
        api.stop()
    state = json.loads((tmp_path / "out" / "_batch_api" / "state.json").read_text())
    sizes = [(tmp_path / "out" / "_batch_api" / f"{p['name']}.requests.jsonl").stat().st_size for p in state["parts"]]
    assert len(sizes) > 2 and max(sizes) <= 9_000, sizes
    assert {b["input"] for b in api.batch_log["batches"]} == {"inline"}
    assert_all_graded(tmp_path / "out", N)


def test_parts_over_the_inline_limit_go_as_input_files_and_answer_in_files(tmp_path, dataset, monkeypatch):
    """A part over the inline limit is uploaded (Files API, resumable) as ``{"key", "request"}``
    lines and answered in a generated file, out of order; errors, malformed answers and an expired
    job still leave every item graded once."""
    api = FakeGeminiBatches(api_key="sk-test", expire_batches={2}, error_every=13, malformed_every=11).start()
    monkeypatch.setattr(GeminiBatches, "inline_max_bytes", 30_000)
    try:
        summary = run(config(dataset, tmp_path / "out", api, max_rounds=5), api)
    finally:
        api.stop()
    assert_all_graded(tmp_path / "out", N)
    assert_once(api)
    state = json.loads((tmp_path / "out" / "_batch_api" / "state.json").read_text())
    sizes = {p["name"]: (tmp_path / "out" / "_batch_api" / f"{p['name']}.requests.jsonl").stat().st_size
             for p in state["parts"]}
    by_file = {p["batch_id"]: p.get("input_file") for p in state["parts"]}
    assert any(s > 30_000 for s in sizes.values()) and any(s <= 30_000 for s in sizes.values()), sizes
    for b in api.batch_log["batches"]:
        part = next(p for p in state["parts"] if p["batch_id"] == b["name"])
        assert (b["input"] != "inline") == (sizes[part["name"]] > 30_000), (b, sizes[part["name"]])
        assert b["input"] == (by_file[b["name"]] or "inline")
    uploaded = [f for f in api.files.values() if f["meta"]["source"] == "UPLOADED"]
    line = json.loads(uploaded[0]["data"].decode().splitlines()[0])
    assert set(line) == {"key", "request"} and "generationConfig" in line["request"], "the REST form, camelCase"
    assert len(uploaded) == sum(b["input"] != "inline" for b in api.batch_log["batches"]), "one upload a part"
    assert set(summary.report["batch_ids"]) == {b["name"] for b in api.batch_log["batches"]}


@pytest.mark.parametrize("expired", [False, True])
def test_a_driver_killed_before_creating_a_file_job_reuses_its_upload_unless_it_expired(tmp_path, dataset,
                                                                                          monkeypatch, expired):
    api = FakeGeminiBatches(api_key="sk-test", per_request_s=0.001).start()
    monkeypatch.setattr(GeminiBatches, "inline_max_bytes", 0)
    cfg = config(dataset, tmp_path / "out", api, max_requests_per_file=6)
    try:
        with pytest.raises(Killed):
            run(cfg, api, sdk=killing_client(api, 2, after=False))
        state = json.loads((tmp_path / "out" / "_batch_api" / "state.json").read_text())
        left = state["parts"][1]
        assert left["status"] == "creating" and left["input_file"] in api.files
        if expired:
            api.delete_file(left["input_file"])
        run(cfg, api)
        assert_all_graded(tmp_path / "out", N)
        assert_once(api)
        uploads = sum(f["meta"]["source"] == "UPLOADED" for f in api.files.values())
        assert uploads == len(state["parts"]), "one upload a part (an expired one's replaced by the next)"
        parts = json.loads((tmp_path / "out" / "_batch_api" / "state.json").read_text())["parts"]
        assert (parts[1]["input_file"] == left["input_file"]) is not expired
        assert len(api.batch_log["batches"]) == len(state["parts"])
    finally:
        api.stop()
