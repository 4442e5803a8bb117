"""The fake providers as child processes (what benchmarks/rate_limit.py runs): they start, answer
through the official SDKs, and their audit logs come back with admission times; the Gemini fake's
day is the configured zone's (a day that ends two seconds from now)."""

import time

import pytest

from raygrade.testing.fake_anthropic import FakeAnthropicProcess
from raygrade.testing.fake_gemini import PER_DAY_QUOTA, FakeGeminiProcess, zone_with_midnight_at


def test_the_anthropic_fake_in_a_process_refuses_past_its_bucket_and_logs_admissions():
    anthropic = pytest.importorskip("anthropic")
    srv = FakeAnthropicProcess(rpm=1, latency_s=0.05)
    try:
        client = anthropic.Anthropic(base_url=srv.base_url, api_key="sk-test", max_retries=0)
        msg = client.messages.create(model="claude-fake", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
        assert msg.usage.input_tokens > 0
        with pytest.raises(anthropic.RateLimitError) as refused:
            client.messages.create(model="claude-fake", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
        assert int(refused.value.response.headers["retry-after"]) >= 1
        ok, rejected = srv.log()
        assert (ok.status, rejected.status) == (200, 429)
        assert ok.admitted < ok.t and ok.t - ok.admitted >= 0.05, "admitted, then answered after the latency"
        assert rejected.admitted == rejected.t and rejected.output_tokens == 0
    finally:
        srv.stop()


def test_the_gemini_fake_counts_the_day_of_its_zone():
    genai = pytest.importorskip("google.genai")
    from google.genai import errors

    for ahead_s in (3, 8, 20):  # a loaded machine may take longer than the day has left to start it
        midnight = time.time() + ahead_s
        srv = FakeGeminiProcess(rpd=1, day_zone=zone_with_midnight_at(midnight))
        if time.time() < midnight - 2:  # two calls to make before it
            break
        srv.stop()
    else:
        pytest.fail("the fake Gemini process took over 18 s to start, three times")
    try:
        client = genai.Client(api_key="sk-test", http_options={"base_url": srv.base_url})
        client.models.generate_content(model="gemini-fake", contents="hi")
        with pytest.raises(errors.ClientError) as spent:
            client.models.generate_content(model="gemini-fake", contents="hi")
        assert spent.value.code == 429 and PER_DAY_QUOTA in str(spent.value)
        deadline = time.monotonic() + ahead_s + 10
        while True:  # a new day in that zone: the count starts again
            try:
                client.models.generate_content(model="gemini-fake", contents="hi")
                break
            except errors.ClientError:
                assert time.monotonic() < deadline, "the day did not end"
                time.sleep(0.2)
        log = srv.log()
        assert [r.status for r in log][:2] == [200, 429] and log[1].quota == PER_DAY_QUOTA
        assert log[-1].status == 200 and all(r.admitted > 0 for r in log)
    finally:
        srv.stop()
