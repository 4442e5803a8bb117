"""OpenAICompatibleProvider against the fake server over real HTTP on 127.0.0.1 (no Ray)."""

import asyncio

import pytest

from raygrade.errors import ProviderConnectionError, ProviderStatusError, RateLimitedError
from raygrade.providers.base import ChatRequest
from raygrade.providers.openai_compat import OpenAICompatibleProvider
from raygrade.testing.fake_openai import FakeOpenAIServer
from raygrade.testing.fake_openai import fake_provider_config as fake_provider

MSG = [{"role": "user", "content": "hello"}]
SCHEMA = {"type": "object", "properties": {"score": {"type": "number", "minimum": 0, "maximum": 4}},
          "required": ["score"], "additionalProperties": False}


def chat(provider, **kw):
    return asyncio.run(provider.chat(ChatRequest(MSG, max_tokens=kw.pop("max_tokens", 50), temperature=0, **kw)))


def test_structured_output_usage_and_headers():
    with_limits = FakeOpenAIServer(rpm=100, tpm=100_000).start()
    try:
        res = chat(OpenAICompatibleProvider(fake_provider(with_limits.base_url)), json_schema=SCHEMA)
        assert res.content == '{"score": 2.0}' and res.finish_reason == "stop"
        assert res.usage.prompt_tokens > 0 and res.usage.completion_tokens > 0
        assert res.headers["x-ratelimit-limit-requests"] == "100"
        assert int(res.headers["x-ratelimit-remaining-tokens"]) == 100_000 - with_limits.log[0].charged_tokens
        assert res.headers["x-request-id"].startswith("req_")
    finally:
        with_limits.stop()
    # Enforced per 10 s: the window's own limits by default, the per-minute ones as OpenAI's headers give them.
    for minute, want in ((False, "16"), (True, "100")):
        per10 = FakeOpenAIServer(rpm=100, tpm=100_000, window_s=10, minute_headers=minute).start()
        try:
            res = chat(OpenAICompatibleProvider(fake_provider(per10.base_url)), json_schema=SCHEMA)
            assert res.headers["x-ratelimit-limit-requests"] == want
            assert int(res.headers["x-ratelimit-remaining-requests"]) == int(want) - 1
        finally:
            per10.stop()


def test_429_becomes_rate_limited_with_retry_after():
    srv = FakeOpenAIServer(rpm=1).start()
    try:
        p = OpenAICompatibleProvider(fake_provider(srv.base_url))

        async def twice():
            await p.chat(ChatRequest(MSG, max_tokens=50, temperature=0))
            await p.chat(ChatRequest(MSG, max_tokens=50, temperature=0))

        with pytest.raises(RateLimitedError) as ei:
            asyncio.run(twice())
        assert ei.value.provider_status == 429 and ei.value.retryable
        assert 0 < ei.value.retry_after_s <= 60
        assert [r.status for r in srv.log] == [200, 429]
    finally:
        srv.stop()


def test_bad_key_is_a_non_retryable_401(monkeypatch, fake_openai):
    monkeypatch.setenv("RAYGRADE_FAKE_KEY", "sk-wrong")
    with pytest.raises(ProviderStatusError) as ei:
        chat(OpenAICompatibleProvider(fake_provider(fake_openai.base_url)))
    assert ei.value.provider_status == 401 and not ei.value.retryable
    assert "sk-wrong" not in str(ei.value)


def test_connection_refused_is_a_connection_error():
    from raygrade.testing.ports import free_port

    with pytest.raises(ProviderConnectionError):
        chat(OpenAICompatibleProvider(fake_provider(f"http://127.0.0.1:{free_port()}/v1", timeout_s=5)))


def test_server_counts_tokens_like_the_api_and_refunds_unused_max_tokens():
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1024, 1024), 255).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    msgs = [{"role": "user", "content": [{"type": "text", "text": "hello"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]
    srv = FakeOpenAIServer(tpm=10_000).start()
    try:
        p = OpenAICompatibleProvider(fake_provider(srv.base_url))

        async def go():
            res = await p.chat(ChatRequest(msgs, max_tokens=1000, temperature=0))
            rec = srv.log[0]
            assert rec.prompt_tokens == res.usage.prompt_tokens == 3 + 3 + 1 + 765, "text + 1024² image = 765"
            assert rec.charged_tokens == rec.prompt_tokens + 1000
            assert rec.final_tokens == res.usage.total_tokens < rec.charged_tokens, "unused max_tokens refunded"
            # After the refund the window has room for a request that would not have fit before.
            res2 = await p.chat(ChatRequest(MSG, max_tokens=10_000 - rec.final_tokens - 20, temperature=0))
            assert res2.finish_reason == "stop"

        asyncio.run(go())
    finally:
        srv.stop()


def test_token_429_carries_precise_retry_after_and_rate_limit_headers():
    srv = FakeOpenAIServer(tpm=1000, refund_unused=False).start()
    try:
        p = OpenAICompatibleProvider(fake_provider(srv.base_url))

        async def go():
            await p.chat(ChatRequest(MSG, max_tokens=900, temperature=0))
            await p.chat(ChatRequest(MSG, max_tokens=900, temperature=0))

        with pytest.raises(RateLimitedError) as ei:
            asyncio.run(go())
        err = ei.value
        assert 55 < err.retry_after_s <= 60, "until the first charge leaves the sliding window"
        assert err.rate_limit_headers["x-ratelimit-limit-tokens"] == "1000"
        assert int(err.rate_limit_headers["x-ratelimit-remaining-tokens"]) < 900
    finally:
        srv.stop()


def test_fault_rates_are_seeded_and_logged_and_audit_counts_windows():
    from raygrade.testing.fake_openai import audit_windows

    def faults(seed):
        srv = FakeOpenAIServer(fault_rates={"500": 0.3, "malformed": 0.2}, seed=seed).start()
        try:
            p = OpenAICompatibleProvider(fake_provider(srv.base_url))

            async def go():
                for _ in range(30):
                    try:
                        await p.chat(ChatRequest(MSG, max_tokens=10, temperature=0))
                    except ProviderStatusError:
                        pass

            asyncio.run(go())
            return [r.fault for r in srv.log], audit_windows(srv.log)
        finally:
            srv.stop()

    a, audit = faults(1)
    assert a == faults(1)[0] and {"500", "malformed", None} == set(a)
    assert audit["admitted"] == 30 and audit["rejected_429"] == 0 and audit["max_window_requests"] == 30
    with pytest.raises(ValueError):
        FakeOpenAIServer(fault_rates={"explode": 1.0})


def test_logprobs_are_requested_and_returned_like_the_api(fake):
    from raygrade.prompts import score_probabilities

    p = OpenAICompatibleProvider(fake_provider(fake.base_url, score_logprobs=True))
    res = chat(p, json_schema=SCHEMA)
    assert "".join(t for t, _ in res.token_logprobs) == res.content == '{"score": 2.0}'
    assert score_probabilities(res.content, res.token_logprobs) == [pytest.approx(0.9 ** 3)]
    assert chat(OpenAICompatibleProvider(fake_provider(fake.base_url)), json_schema=SCHEMA).token_logprobs is None


def test_openrouter_attribution_headers_go_with_every_request(fake_openai):
    fake_openai.reset()
    cfg = fake_provider(fake_openai.base_url, extra_headers={"HTTP-Referer": "https://school.example",
                                                             "X-Title": "raygrade"})
    chat(OpenAICompatibleProvider(cfg))
    assert fake_openai.last_headers["http-referer"] == "https://school.example"
    assert fake_openai.last_headers["x-title"] == "raygrade"


def test_a_repeated_long_system_prefix_is_read_from_the_cache(fake_openai):
    fake_openai.reset()
    system = {"role": "system", "content": "Rubric: award one point per correct step. " * 200}
    p = OpenAICompatibleProvider(fake_provider(fake_openai.base_url))
    first = asyncio.run(p.chat(ChatRequest([system, *MSG], max_tokens=20, temperature=0)))
    second = asyncio.run(OpenAICompatibleProvider(fake_provider(fake_openai.base_url)).chat(
        ChatRequest([system, {"role": "user", "content": "another student"}], max_tokens=20, temperature=0)))
    assert first.cached_tokens == 0 and second.cached_tokens >= 1024 and second.cached_tokens % 128 == 0
    assert second.cached_tokens <= second.usage.prompt_tokens


def test_prompt_cache_key_names_the_shared_prefix_and_goes_to_openai_only(fake_openai):
    """Requests of one assessment share OpenAI's ``prompt_cache_key`` (a hash of the system message,
    nothing readable); sent to OpenAI's own API by default, elsewhere only when configured."""
    from raygrade.batch import GradeBatch
    from raygrade.grading import batch_request
    from raygrade.prompts import StudentWork
    from raygrade.protocol import Question, TextPage
    from raygrade.providers.openai_compat import chat_request

    questions = [Question(id="q1", prompt="Why does TCP use a three-way handshake?", max_score=2,
                          reference_answer="To synchronise sequence numbers in both directions.")]
    batch = GradeBatch(batch_id="b1", job_id="j1", questions=questions, prompt_tokens_estimate=100, max_tokens=100,
                       students=[StudentWork(student_id=f"s{i}", alias=f"s{i + 1}", question_ids=["q1"],
                                             page_indices=[0], pages=[TextPage(text=f"answer {i}")])
                                 for i in range(3)])
    a = batch_request(batch, batch.students[:1], max_tokens=100)
    b = batch_request(batch, batch.students[1:], max_tokens=100)
    other = batch_request(batch.model_copy(update={"questions": [
        q.model_copy(update={"prompt": q.prompt + "?"}) for q in batch.questions]}), batch.students, max_tokens=100)
    assert a.cache_key == b.cache_key != other.cache_key and a.cache_key.startswith("rg-")
    assert batch.questions[0].prompt not in a.cache_key
    openai_api = fake_provider(None)
    assert chat_request(openai_api, a)["prompt_cache_key"] == a.cache_key
    assert "prompt_cache_key" not in chat_request(fake_provider("https://openrouter.ai/api/v1"), a)

    fake_openai.reset()
    chat_with = OpenAICompatibleProvider(fake_provider(fake_openai.base_url, prompt_cache_key=True))
    asyncio.run(chat_with.chat(a))
    assert fake_openai.last_prompt_cache_key == a.cache_key
    asyncio.run(OpenAICompatibleProvider(fake_provider(fake_openai.base_url)).chat(a))
    assert fake_openai.last_prompt_cache_key is None


def test_the_body_on_the_wire_is_what_chat_completions_create_sends():
    """The provider posts its body without openai-python's ``create`` (which walks the body
    against its TypedDicts): what reaches the server must be the JSON ``create`` sends for the
    same request, page images, schema, logprobs and extra body included."""
    import http.server
    import json
    import threading

    import openai

    from raygrade.providers.openai_compat import chat_request
    from raygrade.testing.ports import free_port

    bodies: list[bytes] = []
    completion = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
                  "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                               "message": {"role": "assistant", "content": '{"score": 1}'}}],
                  "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}

    class Capture(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            bodies.append(self.rfile.read(int(self.headers["content-length"])))
            out = json.dumps(completion).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.send_header("x-ratelimit-remaining-requests", "99")
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Capture)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}/v1"
        cfg = fake_provider(base, score_logprobs=True, extra_body={"top_k": 5})
        image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}}
        req = ChatRequest([{"role": "system", "content": "Grade."},
                           {"role": "user", "content": [{"type": "text", "text": "Student s1:"}, image]}],
                          max_tokens=50, temperature=0, json_schema=SCHEMA, cache_key="abc")
        res = asyncio.run(OpenAICompatibleProvider(cfg).chat(req))
        assert res.content == '{"score": 1}' and res.usage.prompt_tokens == 7
        assert res.headers["x-ratelimit-remaining-requests"] == "99" and res.sent_at is not None

        async def via_create():
            client = openai.AsyncOpenAI(api_key="sk-test", base_url=base, max_retries=0)
            await client.chat.completions.create(**chat_request(cfg, req), extra_body=cfg.extra_body)
            await client.close()

        asyncio.run(via_create())
        assert len(bodies) == 2 and json.loads(bodies[0]) == json.loads(bodies[1])  # keys in another order
    finally:
        srv.shutdown()
        srv.server_close()
