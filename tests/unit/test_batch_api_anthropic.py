"""Bulk regrades through Anthropic's Message Batches, with the official ``anthropic`` SDK against
the fake Message Batches API on 127.0.0.1: one row per item through errored, malformed and
expired requests; a driver killed around a batch's creation resumes without creating it twice
(a batch has no metadata: it is found by its creation time and size); ``ray job stop`` cancels.
The fake's log is the judge. No Ray."""

import collections
import json
from types import SimpleNamespace

import anthropic
import pytest
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
from raygrade.testing.fake_anthropic_batches import FakeMessageBatches

N = 150


@pytest.fixture
def dataset(tmp_path):
    return write_batch_dataset(tmp_path / "ds", N)


def config(dataset, out, api, structured_output="json_schema", **batch):
    provider = ProviderConfig(name="claude", kind="anthropic", base_url=api.base_url, api_key_env="RAYGRADE_FAKE_KEY",
                              model="claude-fake", structured_output=structured_output,
                              price_per_mtok_input_usd=3.0, price_per_mtok_output_usd=15.0)
    return RegradeConfig(input=str(dataset), output=str(out), provider=provider, mode="batch-api",
                         submissions_per_block=40,
                         batch_api=BatchApiConfig(**{"max_requests_per_file": 12, "poll_interval_s": 0.01, **batch}))


def client(api):
    return anthropic.Anthropic(base_url=api.base_url, api_key="sk-test", max_retries=0)


def run(cfg, api, sdk=None, sleep=None):
    return run_batch_regrade(cfg, client=sdk or client(api), sleep=sleep or (lambda s: __import__("time").sleep(0.02)))



def assert_once(api):
    """Every request in one batch only, every request run once."""
    sent = collections.Counter(c for b in api.batch_log["batches"] for c in b["custom_ids"])
    ran = collections.Counter(api.batch_log["requests"])
    assert max(sent.values()) == 1 and max(ran.values()) == 1, (sent.most_common(2), ran.most_common(2))


@pytest.mark.parametrize("structured_output", ["json_schema", "tool"])
def test_every_item_is_graded_once_through_errored_malformed_and_expired_requests(tmp_path, dataset,
                                                                                   structured_output):
    api = FakeMessageBatches(api_key="sk-test", expire_batches={2}, error_every=13, malformed_every=11).start()
    try:
        summary = run(config(dataset, tmp_path / "out", api, structured_output, max_rounds=5), api)
    finally:
        api.stop()
    rows = assert_all_graded(tmp_path / "out", N)
    assert all(0 <= r["score"] <= (2 if r["question_id"] == "q1" else 1) for r in rows)
    assert_once(api)
    made = [b["id"] for b in api.batch_log["batches"]]
    second, size = api.batches[made[1]]["request_counts"], len(api.batch_log["batches"][1]["custom_ids"])
    assert second["expired"] == size - size // 2 and second["succeeded"] + second["errored"] == size // 2, second
    assert len(made) > 3 and set(summary.report["batch_ids"]) == set(made)  # 2 parts in round 0, then retries
    assert summary.report["price_factor"] == 0.5 and summary.report["cost_usd"] > 0
    assert summary.report["prompt_tokens"] > 0


def test_requests_that_never_succeed_end_as_typed_error_rows(tmp_path, dataset):
    api = FakeMessageBatches(api_key="sk-test", error_every=1).start()
    try:
        run(config(dataset, tmp_path / "out", api, max_rounds=2), api)
    finally:
        api.stop()
    rows = rows_of(tmp_path / "out")
    assert len(rows) == len(items(N)) and {r["error_type"] for r in rows} == {"provider_error"}
    assert {r["error_message"] for r in rows} == {"api_error: Internal server error"}
    assert len(api.batch_log["requests"]) == 2 * len({r["batch_id"].split("~")[0] for r in rows})  # two rounds


def killing_client(api, n, after):
    """The SDK's client whose ``n``-th ``messages.batches.create`` kills the driver (:class:`DyingCreate`)."""
    sdk = client(api)
    return SimpleNamespace(messages=SimpleNamespace(batches=DyingCreate(sdk.messages.batches, n, after)))


@pytest.mark.parametrize("n,after", [(1, True), (3, True), (3, False)])
def test_a_driver_killed_around_a_creation_resumes_without_creating_a_batch_twice(tmp_path, dataset, n, after):
    """Parts have 6 requests each (the last fewer), so a resumed part whose batch was never made
    must not adopt another part's batch of the same size (the fake's log: each request in one
    batch only)."""
    api = FakeMessageBatches(api_key="sk-test", per_request_s=0.001).start()
    cfg = config(dataset, tmp_path / "out", api, max_requests_per_file=6)
    try:
        with pytest.raises(Killed):
            run(cfg, api, sdk=killing_client(api, n, after))
        state = json.loads((tmp_path / "out" / "_batch_api" / "state.json").read_text())
        assert state["parts"][n - 1]["status"] == "creating" and state["parts"][n - 1]["batch_id"] is None
        run(cfg, api)
        assert_all_graded(tmp_path / "out", N)
        assert_once(api)
        assert len(api.batch_log["batches"]) == len(state["parts"])  # one batch per part, no more
        after = json.loads((tmp_path / "out" / "_batch_api" / "state.json").read_text())
        assert {p["round"] for p in after["parts"]} == {0}, "a part adopted a batch not its own"
    finally:
        api.stop()


def test_stop_cancels_open_batches_and_a_rerun_sends_what_they_did_not_run(tmp_path, dataset):
    api = FakeMessageBatches(api_key="sk-test", per_request_s=0.01).start()
    cfg = config(dataset, tmp_path / "out", api)
    try:
        with pytest.raises(SystemExit):
            run(cfg, api, sleep=stop_driver)
        stopped = [bid for bid, b in api.batches.items() if b["cancel_initiated_at"] is not None]
        assert stopped and all(b["processing_status"] in ("canceling", "ended") for b in api.batches.values())
        run(cfg, api)
        assert {api.batches[bid]["processing_status"] for bid in stopped} == {"ended"}
        assert sum(api.batches[bid]["request_counts"]["canceled"] for bid in stopped) > 0
        assert_all_graded(tmp_path / "out", N)
        assert_once(api)
    finally:
        api.stop()


def test_the_fake_refuses_what_the_api_refuses(tmp_path):
    """raygrade's own batch ids carry '~'; the API allows [A-Za-z0-9_-]{1,64} (raygrade hashes them)."""
    api = FakeMessageBatches(api_key="sk-test", max_requests=2).start()
    params = {"model": "claude-fake", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    try:
        sdk = client(api)
        for requests, what in [([{"custom_id": "run-1~1-0", "params": params}], "pattern"),
                               ([{"custom_id": "a", "params": params}] * 2, "duplicate"),
                               ([{"custom_id": f"r{i}", "params": params} for i in range(3)], "at most 2")]:
            with pytest.raises(anthropic.BadRequestError, match=what):
                sdk.messages.batches.create(requests=requests)
        with pytest.raises(anthropic.AuthenticationError):
            anthropic.Anthropic(base_url=api.base_url, api_key="wrong").messages.batches.list()
        made = sdk.messages.batches.create(requests=[{"custom_id": "ok", "params": params},
                                                     {"custom_id": "bad", "params": {"max_tokens": 1}}])
        assert made.processing_status == "in_progress" and made.request_counts.processing == 2
        while sdk.messages.batches.retrieve(made.id).processing_status != "ended":
            pass
        results = {r.custom_id: r.result for r in sdk.messages.batches.results(made.id)}
        assert results["ok"].type == "succeeded" and results["bad"].type == "errored"
        assert results["bad"].error.error.type == "invalid_request_error"
        assert [b.id for b in sdk.messages.batches.list(limit=1)] == [made.id]
    finally:
        api.stop()
