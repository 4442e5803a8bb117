"""OpenTelemetry spans along a job's path, on Ray Serve's own tracing.

Tracing is off by default. Ray Serve switches it on for every proxy and replica from the
``tracing_config`` of ``serve_config.yaml`` (or ``serve.start(tracing_config=...)``): it installs
the tracer provider and exporter in each replica and carries the trace context through every
deployment-handle call. raygrade adds its own spans to that trace (tracer ``"raygrade"``):

==============================  ==========================================================
span                            where
==============================  ==========================================================
``raygrade.accept``             ingress, ``POST /v1/jobs`` (a caller's ``traceparent`` header
                                is its parent: the platform's trace continues into raygrade)
``raygrade.quota``,             ingress: the quota check, page images to the blob store, the
``raygrade.externalize``,       students no request could hold
``raygrade.admission``
``raygrade.create``,            ingress: the registry call that records the jobs submitted
``raygrade.nudge``              together, and the batcher's nudge (``raygrade.jobs``: how many;
                                the group's spans join its first job's trace)
``raygrade.store <call>``       registry: one store call (``raygrade.store.queued_ms``: the
                                wait for the store's thread)
``raygrade.job``                batcher: driving one job (``raygrade.job.started_by``: ``submit``
                                for the ingress's nudge, ``poll`` for a job found in the store)
``raygrade.plan``,              batcher: reading (OCR) and planning; one batch leased, graded
``raygrade.read``,              and written back
``raygrade.batch``
``raygrade.grade``              grader replica: one batch
``raygrade.limiter.acquire``,   grader: the wait for the global token bucket, and settling
``raygrade.limiter.settle``     what the call used
``chat {model}``                grader: one provider request (OpenTelemetry's GenAI
                                conventions: ``gen_ai.request.model``, ``gen_ai.usage.*``)
``raygrade.webhook``            batcher: one webhook delivery
==============================  ==========================================================

No span carries student text, images or keys: ids, counts, token numbers and error types only.

Exporters for ``tracing_config.exporter_import_path`` (Serve calls them with no argument in each
replica): :func:`otlp_exporter` (OTLP over HTTP, configured by the standard ``OTEL_EXPORTER_OTLP_*``
variables; ``pip install 'raygrade[tracing]'``). Serve's default exporter (an empty path) writes
JSON files under the session's ``logs/serve/spans/``, which :func:`read_span_files` reads.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from raygrade._optional import import_optional

#: The instrumentation scope of raygrade's spans.
TRACER_NAME = "raygrade"

_PROPAGATOR = TraceContextTextMapPropagator()


_TRACER: trace.Tracer | None = None


def tracer() -> trace.Tracer:
    """raygrade's tracer from the global provider. Made once: before a provider is set it is
    OpenTelemetry's proxy tracer, which follows the provider Serve (or a test) sets later."""
    global _TRACER
    if _TRACER is None:
        _TRACER = trace.get_tracer(TRACER_NAME)
    return _TRACER


@contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None, *,
         parent: otel_context.Context | None = None,
         kind: trace.SpanKind = trace.SpanKind.INTERNAL) -> Iterator[trace.Span]:
    """A span around the block, current inside it (children nest under it, and deployment-handle
    calls made inside carry it). An exception escaping the block sets the span's status to error
    and its ``error.type`` attribute (raygrade's ``error_type``, else the exception's class name;
    never its message, which may quote a student's page); it propagates unchanged.

    Args:
        name: The span's name (see the module's table).
        attributes: Ids and numbers only (``None`` values are dropped).
        parent: The parent context (default: the current one), e.g. :func:`extract`'s.
        kind: OpenTelemetry's span kind (``CLIENT`` for a provider request).
    """
    attrs = {k: v for k, v in (attributes or {}).items() if v is not None}
    # Not OpenTelemetry's own exception events: their message and stack trace may quote a page.
    with tracer().start_as_current_span(name, context=parent, kind=kind, attributes=attrs,
                                        record_exception=False, set_status_on_exception=False) as s:
        try:
            yield s
        except BaseException as exc:
            error_type = getattr(exc, "error_type", None) or type(exc).__name__
            s.set_attribute("error.type", error_type)
            s.set_status(Status(StatusCode.ERROR, error_type))
            raise


class ProviderCall:
    """The ``chat {model}`` span of one provider request (:func:`provider_span`)."""

    def __init__(self, s: trace.Span):
        self.span = s

    def record(self, model: str | None, usage: Any, finish_reason: str | None) -> None:
        """The answer's model, token usage (``prompt_tokens``/``completion_tokens``, or ``None``)
        and finish reason, under OpenTelemetry's GenAI attribute names."""
        attrs = {"gen_ai.response.model": model,
                 "gen_ai.response.finish_reasons": [finish_reason] if finish_reason else None}
        if usage is not None:
            attrs |= {"gen_ai.usage.input_tokens": usage.prompt_tokens,
                      "gen_ai.usage.output_tokens": usage.completion_tokens}
        self.span.set_attributes({k: v for k, v in attrs.items() if v is not None})


@contextmanager
def provider_span(model: str | None) -> Iterator[ProviderCall]:
    """A ``CLIENT`` span around one provider request, named and tagged by OpenTelemetry's GenAI
    semantic conventions (``chat {model}``, ``gen_ai.operation.name``, ``gen_ai.request.model``);
    :meth:`ProviderCall.record` adds the answer's figures; a failed request's span has the error's type."""
    name = f"chat {model}" if model else "chat"
    with span(name, {"gen_ai.operation.name": "chat", "gen_ai.request.model": model},
              kind=trace.SpanKind.CLIENT) as s:
        yield ProviderCall(s)


def extract(headers: Mapping[str, str]) -> otel_context.Context | None:
    """The W3C trace context in ``headers`` (``traceparent``, ``tracestate``) as a parent for
    :func:`span`, or ``None`` when there is none or it is malformed (then the current context is
    the parent)."""
    if "traceparent" not in headers:
        return None
    ctx = _PROPAGATOR.extract(carrier=dict(headers))
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


@contextmanager
def joined(headers: Mapping[str, str]) -> Iterator[None]:
    """The trace context in ``headers`` (W3C, from :func:`inject`) current inside the block:
    spans started there join that trace. Nothing changes when ``headers`` carry none."""
    ctx = extract(headers)
    if ctx is None:
        yield
        return
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


def detached() -> contextvars.Context:
    """A copy of the current context variables without a trace context: for a long-lived task
    started while a request is handled (``asyncio.create_task(coro, context=detached())``), so
    that what it does later does not join that request's trace."""
    ctx = contextvars.copy_context()
    ctx.run(otel_context.attach, otel_context.Context())
    return ctx


def new_trace() -> otel_context.Context:
    """An empty context: as :func:`span`'s ``parent``, the span starts a trace of its own."""
    return otel_context.Context()


def inject() -> dict[str, str]:
    """The current trace context as W3C headers (``{"traceparent": ...}``; empty when no span
    is recording): what a caller sends so that raygrade's spans join its trace."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier


def otlp_exporter() -> list:
    """Span processors for Serve's ``tracing_config.exporter_import_path``: a batching processor
    sending OTLP over HTTP/protobuf to ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (or
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/traces``; default ``http://localhost:4318``), with
    the headers, timeout and compression of the standard ``OTEL_EXPORTER_OTLP_*`` variables.

    Raises:
        MissingDependencyError: ``opentelemetry-exporter-otlp-proto-http`` is not installed
            (``pip install 'raygrade[tracing]'``).
    """
    otlp = import_optional("opentelemetry.exporter.otlp.proto.http.trace_exporter", "tracing",
                           "Exporting spans by OTLP")
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return [BatchSpanProcessor(otlp.OTLPSpanExporter())]


def read_span_files(paths: list[Path]) -> list[dict[str, Any]]:
    """Spans written by OpenTelemetry's ``ConsoleSpanExporter`` (Serve's default file exporter):
    each file holds JSON objects one after another (indented, not one per line).

    Returns:
        The spans as dicts (``name``, ``context.trace_id``/``span_id``, ``parent_id``,
        ``start_time``/``end_time`` as ISO 8601 strings, ``attributes``, ``status``), in file
        order; a file cut off mid-object (a replica still writing) yields the spans before the cut.
    """
    decoder, spans = json.JSONDecoder(), []
    for path in paths:
        text, i = Path(path).read_text(), 0
        while True:
            while i < len(text) and text[i].isspace():
                i += 1
            if i >= len(text):
                break
            try:
                obj, i = decoder.raw_decode(text, i)
            except json.JSONDecodeError:
                break
            spans.append(obj)
    return spans
