"""The public clients cover every route and raise raygrade's typed errors with the server's
body; the OpenAPI document declares the status codes the server really sends; every error,
unknown routes included, is one OpenAI-shaped body with a string (or null) ``code``."""

import asyncio

import httpx
import pytest
from test_api import make_job  # rootdir-relative: pytest puts tests/integration on sys.path

from raygrade import AsyncClient, Client
from raygrade.client import APIConnectionError
from raygrade.errors import ConflictError, IllegalTransitionError, InvalidRequestError, NotFoundError
from raygrade.testing.ports import free_port


def test_client_covers_every_route_with_typed_errors(fake_app, fake):
    with Client(fake_app) as client:
        seen = []
        st = client.submit(make_job(n_students=3), idempotency_key="client-1")
        again = client.submit(make_job(n_students=3), idempotency_key="client-1")
        assert again.id == st.id
        final = client.wait(st.id, timeout_s=120, poll_s=0.2, progress=seen.append)
        assert final.state.value == "succeeded" and seen and seen[-1].state.value == "succeeded"
        assert len(client.results(st.id).results) == final.progress.items_total
        assert sum(client.replicas(st.id).values()) == final.progress.batches_done
        usage = client.usage()  # auth disabled: tenant "default", no quota
        assert usage.tenant == "default" and usage.quota is None and usage.items >= final.progress.items_total
        with pytest.raises(IllegalTransitionError) as ended:
            client.cancel(st.id)
        assert ended.value.http_status == 409 and ended.value.body["error"]["type"] == "illegal_state_transition"
        with pytest.raises(ConflictError):
            client.submit(make_job(n_students=4), idempotency_key="client-1")
        with pytest.raises(NotFoundError) as missing:
            client.status("job_nope")
        assert missing.value.param == "job_id" and missing.value.http_status == 404
        bad = make_job(n_students=1).model_dump(mode="json")
        bad["assessment"]["questions"][0]["max_score"] = -1
        with pytest.raises(InvalidRequestError) as invalid:
            client.submit(bad)
        assert invalid.value.param == "assessment.questions[0].max_score"


def test_async_client_submits_cancels_and_waits(fake_app, fake):
    async def main():
        async with AsyncClient(fake_app) as client:
            st = await client.submit(make_job(n_students=12))
            cancelled = await client.cancel(st.id)
            final = await client.wait(st.id, timeout_s=60, poll_s=0.2)
            return cancelled, final

    fake.latency_s = 2.0  # slow answers: the job has not ended when it is cancelled
    try:
        cancelled, final = asyncio.run(main())
    finally:
        fake.latency_s = 0.02
    assert cancelled.state.value == "cancelled" and final.state.value == "cancelled"


def test_connection_errors_are_typed():
    with Client(f"http://127.0.0.1:{free_port()}", timeout_s=2) as client, pytest.raises(APIConnectionError):
        client.status("job_x")


def test_openapi_declares_the_real_status_codes_and_the_error_model(fake_app):
    doc = httpx.get(f"{fake_app}/openapi.json", timeout=30).json()
    responses = {(path, method): set(op["responses"]) for path, ops in doc["paths"].items()
                 for method, op in ops.items()}
    assert not any("422" in codes for codes in responses.values()), responses
    assert {"202", "200", "400", "409", "429"} <= responses[("/v1/jobs", "post")]
    assert {"404", "409"} <= responses[("/v1/jobs/{job_id}/cancel", "post")]
    assert "404" in responses[("/v1/jobs/{job_id}", "get")]
    err = doc["paths"]["/v1/jobs"]["post"]["responses"]["400"]["content"]["application/json"]["schema"]
    assert err["$ref"].endswith("/ErrorResponse")
    assert set(doc["components"]["schemas"]["ErrorDetail"]["properties"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("method, path, status", [("GET", "/v1/nope", 404), ("DELETE", "/v1/jobs", 405)])
def test_unknown_routes_answer_the_openai_error_body(fake_app, method, path, status):
    r = httpx.request(method, f"{fake_app}{path}", timeout=30)
    body = r.json()
    assert r.status_code == status and set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] is None or isinstance(body["error"]["code"], str)


def test_error_code_is_a_string_or_null(fake_app):
    r = httpx.get(f"{fake_app}/v1/jobs/job_nope", timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] is None
