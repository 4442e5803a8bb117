"""Each provider fault, injected by the fake server into a real job through the Serve
app, ends as designed and the job still completes: timeouts, 5xx and connection resets
are retried; output truncated at max_tokens is split into smaller requests; malformed
JSON is re-asked; refusals and faults that outlast the retries are reported per item
with their type."""

import pytest

from raygrade.cli import Client
from raygrade.protocol import GradingJob


def job(n: int) -> GradingJob:
    return GradingJob.model_validate({
        "assessment": {"questions": [{"id": "q", "prompt": "Name a TCP header field.", "max_score": 2}]},
        "submissions": [{"student_id": f"s{i}", "pages": [{"type": "text", "text": f"answer {i}"}]}
                        for i in range(n)]})


def run(fake_app, fake, faults: list[str], n: int = 1):
    fake.script.extend(faults)
    client = Client(fake_app)
    st = client.wait(client.submit(job(n)).id, timeout_s=90, poll_s=0.2, progress=False)
    return st, client.results(st.id)


@pytest.mark.parametrize("fault", ["500", "timeout", "reset"])
def test_transient_faults_are_retried(fake_app, fake, fault):
    st, res = run(fake_app, fake, [fault])
    assert st.state.value == "succeeded" and len(res.results) == 1
    assert [r.fault for r in fake.log] == [fault, None]


def test_truncated_output_is_split_into_smaller_batches(fake_app, fake):
    st, res = run(fake_app, fake, ["truncated"], n=2)  # both students in one request
    assert st.state.value == "succeeded" and len(res.results) == 2
    assert [sorted(r.items) for r in fake.log] == [["s1/q", "s2/q"], ["s1/q"], ["s2/q"]]


def test_malformed_json_is_reasked(fake_app, fake):
    st, res = run(fake_app, fake, ["malformed"])
    assert st.state.value == "succeeded" and [r.fault for r in fake.log] == ["malformed", None]


def test_a_refusal_is_reported_per_item_and_the_job_completes(fake_app, fake):
    st, res = run(fake_app, fake, ["refusal"] * 3, n=2)  # the first ask and both re-asks
    assert st.state.value == "failed" and st.progress.items_failed == 2
    assert {(e.type, tuple(e.student_ids)) for e in res.errors} == {("refusal", ("s0",)), ("refusal", ("s1",))}


def test_a_fault_that_outlasts_the_retries_is_typed_per_item(fake_app, fake):
    # max_retries=2: three 5xx in a row fail the batch; the job completes with the typed error.
    st, res = run(fake_app, fake, ["500", "500", "500"])
    assert st.state.value == "failed" and st.progress.items_failed == 1 and len(fake.log) == 3
    assert [(e.type, e.student_ids) for e in res.errors] == [("provider_error", ["s0"])]
