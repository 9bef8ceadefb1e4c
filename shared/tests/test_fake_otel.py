"""The OpenTelemetry collector fake, held to the SDK's own OTLP/HTTP exporter and to a
second, independent client (a protobuf request built with opentelemetry-proto, sent by
httpx)."""

from __future__ import annotations

import gzip
import os

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ProtoResource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind

from apex_testkit._fakes import start
from apex_testkit._waiting import DeadlineExceeded


def _export_with_the_sdk(endpoint: str, *, compression: Compression) -> tuple[str, str, str]:
    """A parent and a child span sent by the SDK's exporter; (trace, parent, child) ids."""
    provider = TracerProvider(resource=Resource.create({"service.name": "selftest"}))
    exporter = OTLPSpanExporter(endpoint=endpoint, compression=compression, timeout=10)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("apex.selftest")
    try:
        with tracer.start_as_current_span("parent", kind=SpanKind.SERVER) as parent:
            parent.set_attribute("run.id", "r-1")
            with tracer.start_as_current_span("child", kind=SpanKind.CLIENT) as child:
                child.set_attribute("tokens", 42)
                child.set_attribute("models", ["a", "b"])
                child.set_attribute("cached", False)
        assert provider.force_flush(10_000)
    finally:
        provider.shutdown()
    ids = parent.get_span_context(), child.get_span_context()
    return f"{ids[0].trace_id:032x}", f"{ids[0].span_id:016x}", f"{ids[1].span_id:016x}"


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_the_sdks_exporter_sends_spans_the_collector_reads_back(otel_collector, compression):
    trace_id, parent_id, child_id = _export_with_the_sdk(
        otel_collector.endpoint, compression=compression
    )
    spans = {s.name: s for s in otel_collector.spans}
    assert set(spans) == {"parent", "child"}
    parent, child = spans["parent"], spans["child"]
    assert (parent.trace_id, parent.span_id, parent.parent_span_id) == (trace_id, parent_id, None)
    assert (child.trace_id, child.span_id, child.parent_span_id) == (trace_id, child_id, parent_id)
    assert parent.attributes == {"run.id": "r-1"}
    assert child.attributes == {"tokens": 42, "models": ["a", "b"], "cached": False}
    assert {parent.service, child.service} == {"selftest"}
    assert (parent.kind, child.kind) == ("SPAN_KIND_SERVER", "SPAN_KIND_CLIENT")
    assert child.scope == "apex.selftest"
    assert parent.start_ns <= child.start_ns <= child.end_ns <= parent.end_ns
    (post,) = otel_collector.requests
    assert (post.method, post.path, post.status) == ("POST", "/v1/traces", 200)


def _raw_request(trace_id: bytes, span_id: bytes) -> ExportTraceServiceRequest:
    """One span, built field by field with opentelemetry-proto (no SDK)."""
    span = Span(
        trace_id=trace_id,
        span_id=span_id,
        name="raw",
        kind=Span.SpanKind.SPAN_KIND_INTERNAL,
        start_time_unix_nano=1,
        end_time_unix_nano=2,
        attributes=[
            KeyValue(key="n", value=AnyValue(int_value=7)),
            KeyValue(key="x", value=AnyValue(double_value=0.5)),
            KeyValue(
                key="l",
                value=AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="s")])),
            ),
        ],
    )
    resource = ProtoResource(
        attributes=[KeyValue(key="service.name", value=AnyValue(string_value="raw-client"))]
    )
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=[span])])]
    )


def test_a_raw_protobuf_post_is_decoded_and_answered_in_otlp(otel_collector):
    trace_id, span_id = os.urandom(16), os.urandom(8)
    body = _raw_request(trace_id, span_id).SerializeToString()
    answer = httpx.post(
        otel_collector.endpoint,
        content=gzip.compress(body),
        headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/x-protobuf"
    ExportTraceServiceResponse.FromString(answer.content)  # OTLP's answer, decodable
    (span,) = otel_collector.spans
    assert (span.name, span.trace_id, span.span_id) == ("raw", trace_id.hex(), span_id.hex())
    assert span.parent_span_id is None
    assert span.attributes == {"n": 7, "x": 0.5, "l": ["s"]}
    assert (span.service, span.kind, span.start_ns, span.end_ns) == (
        "raw-client",
        "SPAN_KIND_INTERNAL",
        1,
        2,
    )


def test_bad_exports_are_refused_and_nothing_is_kept(otel_collector):
    json_body = httpx.post(otel_collector.endpoint, json={"resourceSpans": []})
    assert json_body.status_code == 415, json_body.text
    garbage = httpx.post(
        otel_collector.endpoint,
        content=b"\xff\xff\xff",
        headers={"Content-Type": "application/x-protobuf"},
    )
    assert garbage.status_code == 400, garbage.text
    assert otel_collector.spans == []


async def test_wait_for_spans_waits_for_the_count_and_names_what_came(otel_collector):
    trace_id, _, _ = _export_with_the_sdk(
        otel_collector.endpoint, compression=Compression.NoCompression
    )
    found = await otel_collector.wait_for_spans(trace_id=trace_id, count=2, timeout=5)
    assert sorted(s.name for s in found) == ["child", "parent"]
    assert [s.name for s in await otel_collector.wait_for_spans(name="child")] == ["child"]
    with pytest.raises(DeadlineExceeded, match="received"):
        await otel_collector.wait_for_spans(trace_id=trace_id, count=3, timeout=0.2)


def test_a_reset_forgets_the_spans(otel_collector):
    _export_with_the_sdk(otel_collector.endpoint, compression=Compression.NoCompression)
    assert len(otel_collector.spans) == 2
    otel_collector.reset()
    assert otel_collector.spans == []
    assert otel_collector.requests == []


def test_as_a_process_the_collector_takes_the_sdks_spans(apex_run):
    collector = start(apex_run, "otel", process=True)
    try:
        assert collector.running.pid is not None
        trace_id, _, _ = _export_with_the_sdk(
            collector.endpoint, compression=Compression.NoCompression
        )
        assert {(s.name, s.trace_id) for s in collector.spans} == {
            ("parent", trace_id),
            ("child", trace_id),
        }
    finally:
        collector.close()
