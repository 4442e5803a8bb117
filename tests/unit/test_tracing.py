"""Spans along a job's path (``raygrade.tracing``), recorded in memory: the dispatcher on a virtual
clock, a batch through :class:`BatchGrader`, W3C context in and out, the OTLP exporter against a
real collector endpoint on 127.0.0.1, and the reader of Serve's span files."""

from __future__ import annotations

import asyncio
import gzip
import http.server
import json
import threading

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.trace import StatusCode
from support.spans import by_name, memory_exporter
from test_dispatch import POLL_S, Grader, clock, dispatcher, drive, make_job, registry, store  # noqa: F401  (fixtures)
from test_grading import ScriptedProvider, batch, good, grader

from raygrade.errors import ProviderStatusError
from raygrade.tracing import detached, extract, inject, otlp_exporter, read_span_files, span

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


@pytest.fixture
def spans():
    exporter = memory_exporter()
    exporter.clear()
    yield exporter
    exporter.clear()


def test_a_submitted_job_is_one_trace_under_the_call_that_submitted_it(store, registry, clock, spans):  # noqa: F811
    async def main():
        status, _ = store.create_job(make_job(5))
        with span("caller") as caller:
            task = dispatcher(registry, clock, Grader(), limit=2).submit(status.id)
        await drive(task, clock)
        return status.id, caller

    job_id, caller = asyncio.run(main())
    named = by_name(spans.get_finished_spans())
    [job] = named["raygrade.job"]
    assert job.parent.span_id == caller.get_span_context().span_id
    assert job.attributes["raygrade.job_id"] == job_id and job.attributes["raygrade.job.started_by"] == "submit"
    assert job.attributes["raygrade.job.outcome"] == "succeeded"
    [plan] = named["raygrade.plan"]
    assert plan.parent.span_id == job.context.span_id and plan.attributes["raygrade.batches"] == 3
    assert len(named["raygrade.batch"]) == 3
    assert all(b.parent.span_id == job.context.span_id for b in named["raygrade.batch"])
    assert sorted(b.attributes["raygrade.students"] for b in named["raygrade.batch"]) == [1, 2, 2]
    # Store calls made while driving the job are its children, with the job's trace id.
    stored = [s for s in spans.get_finished_spans() if s.name.startswith("raygrade.store ")]
    assert {"raygrade.store status_and_job", "raygrade.store plan_and_lease", "raygrade.store complete_and_lease",
            "raygrade.store complete_and_finish"} == {s.name for s in stored}
    assert {s.context.trace_id for s in stored} == {caller.get_span_context().trace_id}


def test_a_job_found_in_the_store_joins_the_trace_its_submission_stored(store, registry, clock, spans):  # noqa: F811
    async def main():
        traced, _ = store.create_job(make_job(1), trace_context={"traceparent": PARENT})
        untraced, _ = store.create_job(make_job(1))
        d = dispatcher(registry, clock, Grader())
        clock.now += POLL_S  # queued jobs are found once a poll interval old (their nudge would come first)
        await d.control_step()  # what the control loop does every poll_interval_s
        for job_id in (traced.id, untraced.id):
            await drive(d.submit(job_id), clock)
        return traced.id, untraced.id

    traced, untraced = asyncio.run(main())
    jobs = {s.attributes["raygrade.job_id"]: s for s in by_name(spans.get_finished_spans())["raygrade.job"]}
    assert jobs[traced].attributes["raygrade.job.started_by"] == "poll"
    assert f"{jobs[traced].context.trace_id:032x}" == TRACE_ID
    assert f"{jobs[traced].parent.span_id:016x}" == PARENT[36:52]
    assert jobs[untraced].parent is None and f"{jobs[untraced].context.trace_id:032x}" != TRACE_ID  # a trace of its own
    assert store.trace_context(traced) == {"traceparent": PARENT} and store.trace_context(untraced) is None


def test_a_callers_traceparent_is_the_parent_and_a_malformed_one_is_ignored(spans):
    assert extract({}) is None
    assert extract({"traceparent": "00-not-a-trace"}) is None
    assert extract({"traceparent": f"00-{'0' * 32}-b7ad6b7169203331-01"}) is None  # an all-zero trace id is invalid
    with span("accept", parent=extract({"traceparent": PARENT, "tracestate": "vendor=1"})) as s:
        out = inject()
    assert f"{s.get_span_context().trace_id:032x}" == TRACE_ID
    # The span made under the caller's is the parent of what is sent on.
    assert out["traceparent"].startswith(f"00-{TRACE_ID}-") and out["traceparent"] != PARENT
    assert out["tracestate"] == "vendor=1"
    assert inject() == {}  # no span current: nothing to propagate


def test_a_task_started_with_a_detached_context_is_outside_the_request_trace(spans):
    async def main():
        async def loop_body():
            with span("poll"):
                pass

        with span("request"):
            inherited = asyncio.get_running_loop().create_task(loop_body())
            own = asyncio.get_running_loop().create_task(loop_body(), context=detached())
        await asyncio.gather(inherited, own)

    asyncio.run(main())
    request = by_name(spans.get_finished_spans())["request"][0]
    polls = by_name(spans.get_finished_spans())["poll"]
    assert sorted(p.parent is None for p in polls) == [False, True]
    assert [p.parent.span_id for p in polls if p.parent] == [request.context.span_id]


def test_a_provider_request_is_a_genai_client_span_without_student_text(spans):
    b = batch().model_copy(update={"model": "gpt-x"})
    g, _ = grader(ScriptedProvider([good(b.students)]))
    out = asyncio.run(g.grade(b))
    assert not out.errors
    named = by_name(spans.get_finished_spans())
    [call] = named["chat gpt-x"]
    assert call.kind.name == "CLIENT" and call.attributes["gen_ai.operation.name"] == "chat"
    assert call.attributes["gen_ai.request.model"] == "gpt-x" and call.attributes["gen_ai.response.model"] == "m"
    assert (call.attributes["gen_ai.usage.input_tokens"], call.attributes["gen_ai.usage.output_tokens"]) == (80, 20)
    assert tuple(call.attributes["gen_ai.response.finish_reasons"]) == ("stop",)
    [acquire], [settle] = named["raygrade.limiter.acquire"], named["raygrade.limiter.settle"]
    assert acquire.attributes["raygrade.tokens"] == 100 + 200  # the prompt estimate + max_tokens
    assert acquire.end_time <= call.start_time <= settle.start_time
    text = json.dumps([dict(s.attributes) for s in spans.get_finished_spans()])
    assert "answer 1" not in text and "student-1" not in text  # batch ids, never students' work or names


def test_a_failed_provider_request_is_an_error_span_naming_only_the_error_type(spans):
    p = ScriptedProvider([ProviderStatusError("400 bad request", provider_status=400)])
    out = asyncio.run(grader(p)[0].grade(batch(1)))
    assert out.errors[0].type == "provider_error"
    [call] = by_name(spans.get_finished_spans())["chat"]
    assert call.status.status_code == StatusCode.ERROR and call.attributes["error.type"] == "provider_error"
    assert call.events == () and "bad request" not in json.dumps([call.status.description, dict(call.attributes)])


class _Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP trace endpoint: keeps the decoded ``ExportTraceServiceRequest`` bodies."""

    received: list = []

    def do_POST(self):  # noqa: N802
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        msg = ExportTraceServiceRequest()
        msg.ParseFromString(body)
        type(self).received.append((self.path, self.headers.get("x-tenant"), msg))
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def test_the_otlp_exporter_sends_spans_to_the_configured_collector(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Collector.received = []
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=school-1")
    provider = TracerProvider()  # what Serve does in each replica with the exporter's processors
    try:
        for processor in otlp_exporter():
            provider.add_span_processor(processor)
        with provider.get_tracer("raygrade").start_as_current_span("raygrade.accept", attributes={"raygrade.items": 3}):
            pass
        assert provider.force_flush(10_000)
    finally:
        provider.shutdown()
        server.shutdown()
    [(path, tenant, msg)] = _Collector.received
    assert path == "/v1/traces" and tenant == "school-1"
    [sent] = [s for rs in msg.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert sent.name == "raygrade.accept"
    assert [(a.key, a.value.int_value) for a in sent.attributes] == [("raygrade.items", 3)]


def test_span_files_are_read_back_and_a_file_cut_mid_span_keeps_what_came_before(tmp_path):
    path = tmp_path / "replica_tracing.json"
    with path.open("w") as out:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=out)))
        t = provider.get_tracer("raygrade")
        with t.start_as_current_span("raygrade.job"), t.start_as_current_span("raygrade.plan"):
            pass
        provider.shutdown()
    with path.open("a") as out:
        out.write('{\n    "name": "raygrade.batch",\n    "context": {')  # a replica still writing
    spans = read_span_files([path])
    assert [s["name"] for s in spans] == ["raygrade.plan", "raygrade.job"]
    assert spans[0]["parent_id"] == spans[1]["context"]["span_id"]


def test_serve_configs_commented_tracing_block_is_valid_for_serve_and_its_exporter_contract():
    """Uncommented as a user would, ``serve_config.yaml``'s ``tracing_config`` passes Serve's
    schema, and the exporter it names is what Serve accepts (a function of no argument returning
    span processors)."""
    from pathlib import Path

    import yaml
    from ray._common.utils import import_attr
    from ray.serve._private.tracing_utils import (
        _validate_tracing_exporter,
        _validate_tracing_exporter_processors,
    )
    from ray.serve.schema import ServeDeploySchema

    text = (Path(__file__).resolve().parents[2] / "serve_config.yaml").read_text()
    lines = text.splitlines()
    start = lines.index("#tracing_config:")
    block = [ln[1:] for ln in lines[start:] if ln.startswith("#")][:4]  # the block, uncommented
    assert block[0] == "tracing_config:" and len(block) == 4
    config = yaml.safe_load("\n".join(lines[:start] + block + lines[start + len(block):]))
    schema = ServeDeploySchema.model_validate(config)
    assert schema.tracing_config.enabled and 0 < schema.tracing_config.sampling_ratio < 1
    exporter = import_attr(schema.tracing_config.exporter_import_path)
    _validate_tracing_exporter(exporter)
    processors = exporter()
    try:
        _validate_tracing_exporter_processors(processors)
    finally:
        for p in processors:
            p.shutdown()
