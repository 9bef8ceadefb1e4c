"""A fake OpenTelemetry collector: the OTLP/HTTP traces endpoint, enough for the SDK's
own exporter (`opentelemetry-exporter-otlp-proto-http`'s `OTLPSpanExporter`).

`POST /v1/traces` takes an `ExportTraceServiceRequest` in the binary protobuf encoding
(`Content-Type: application/x-protobuf`, optionally `Content-Encoding: gzip` or
`deflate`), decoded with `opentelemetry-proto`, and answers 200 with an empty
`ExportTraceServiceResponse` (OTLP/HTTP 1.x). A body that does not decode is a 400, another
content type a 415 (the JSON encoding is not served). The spans received are kept,
flattened: name, trace and span ids in lowercase hex, the parent's span id (None for a
root), attributes as Python values, the resource's `service.name`, kind, times.
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from apex_testkit._fakes._control import FakeClient
from apex_testkit._fakes._server import CONTROL, FakeServer

TRACES = "/v1/traces"
PROTOBUF = "application/x-protobuf"


def any_value(value: AnyValue) -> Any:
    """An OTLP attribute value as a Python value (arrays as lists, maps as dicts)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    return getattr(value, kind)


def attributes_of(pairs: Any) -> dict[str, Any]:
    """OTLP key-value pairs as a dict."""
    return {pair.key: any_value(pair.value) for pair in pairs}


def _flatten(request: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    """Every span of an export, with its resource's service name."""
    spans: list[dict[str, Any]] = []
    for resource_spans in request.resource_spans:
        resource = attributes_of(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    {
                        "name": span.name,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex() or None,
                        "attributes": attributes_of(span.attributes),
                        "service": resource.get("service.name"),
                        "scope": scope_spans.scope.name,
                        "kind": ProtoSpan.SpanKind.Name(span.kind),
                        "start_ns": span.start_time_unix_nano,
                        "end_ns": span.end_time_unix_nano,
                        "status": span.status.code,
                    }
                )
    return spans


def _body(raw: bytes, encoding: str) -> bytes:
    """The body without its content encoding (ValueError for an unknown one)."""
    if encoding in ("", "identity"):
        return raw
    if encoding == "gzip":
        return gzip.decompress(raw)
    if encoding == "deflate":
        return zlib.decompress(raw)
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


class OtelServer(FakeServer):
    name = "otel"

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url)
        self.changed = asyncio.Condition()
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.spans: list[dict[str, Any]] = []

    def config(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "endpoint": f"{self.base_url}{TRACES}"}

    async def export(self, request: Request) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type != PROTOBUF:
            return JSONResponse(
                {"detail": f"Content-Type must be {PROTOBUF}, got {content_type!r}"},
                status_code=415,
            )
        try:
            raw = _body(await request.body(), request.headers.get("content-encoding", ""))
            message = ExportTraceServiceRequest.FromString(raw)
        except (ValueError, OSError, zlib.error, DecodeError) as exc:
            return JSONResponse({"detail": f"not an ExportTraceServiceRequest: {exc}"}, 400)
        async with self.changed:
            self.spans.extend(_flatten(message))
            self.changed.notify_all()
        answer = ExportTraceServiceResponse().SerializeToString()
        return Response(answer, media_type=PROTOBUF)

    # -- control ----------------------------------------------------------------------

    async def list_spans(self, request: Request) -> Response:
        query = request.query_params
        trace_id, name = query.get("trace_id"), query.get("name")
        count = int(query.get("count", "1"))
        wait = float(query.get("wait", "0"))

        def matching() -> list[dict[str, Any]]:
            return [
                s
                for s in self.spans
                if (trace_id is None or s["trace_id"] == trace_id)
                and (name is None or s["name"] == name)
            ]

        if wait > 0:
            async with self.changed:
                try:
                    await asyncio.wait_for(
                        self.changed.wait_for(lambda: len(matching()) >= count), wait
                    )
                except TimeoutError:
                    seen = sorted({(s["name"], s["trace_id"]) for s in self.spans})
                    detail = (
                        f"not {count} span(s) named {name or 'anything'} of trace "
                        f"{trace_id or 'any'} within {wait:g} s (received: {seen})"
                    )
                    return JSONResponse({"detail": detail}, status_code=408)
        return JSONResponse(matching())

    def routes(self) -> list[BaseRoute]:
        return [
            Route(TRACES, self.export, methods=["POST"]),
            Route(f"{CONTROL}/spans", self.list_spans),
        ]


@dataclass(frozen=True)
class CollectedSpan:
    """One span the collector received."""

    name: str
    trace_id: str  # 32 lowercase hex digits
    span_id: str  # 16 lowercase hex digits
    parent_span_id: str | None  # None: a root span (of this service; its caller's remote)
    attributes: dict[str, Any]
    service: str | None  # the resource's service.name
    scope: str  # the instrumentation scope (the tracer's name)
    kind: str  # SPAN_KIND_SERVER, SPAN_KIND_CLIENT, SPAN_KIND_INTERNAL...
    start_ns: int
    end_ns: int
    status: int  # 0 unset, 1 ok, 2 error

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CollectedSpan:
        return cls(**data)


class FakeOtelCollector(FakeClient):
    """The `otel_collector` fixture: an OTLP/HTTP traces endpoint on 127.0.0.1.

    `endpoint` (the full `/v1/traces` URL an exporter posts to), `base_url`; `spans`;
    `await wait_for_spans(trace_id=, name=, count=1, timeout=5)`; `requests`.
    """

    name = "otel"

    @property
    def base_url(self) -> str:
        return str(self.config["base_url"])

    @property
    def endpoint(self) -> str:
        return str(self.config["endpoint"])

    def settings(self) -> dict[str, str]:
        return {"endpoint": self.endpoint}

    @property
    def spans(self) -> list[CollectedSpan]:
        """Every span received since the last reset, in the order they arrived."""
        return [CollectedSpan.from_json(s) for s in self._call("GET", "spans")]

    async def wait_for_spans(
        self,
        *,
        trace_id: str | None = None,
        name: str | None = None,
        count: int = 1,
        timeout: float = 5.0,
    ) -> list[CollectedSpan]:
        """The spans (of `trace_id`, named `name`, if given) once there are at least
        `count`, waiting up to `timeout` seconds (exporters batch: spans come late);
        DeadlineExceeded names what was received instead."""
        params = {"count": str(count)}
        if trace_id is not None:
            params["trace_id"] = trace_id
        if name is not None:
            params["name"] = name
        found = await self._wait("spans", params, timeout)
        return [CollectedSpan.from_json(s) for s in found]


SERVER = OtelServer
CLIENT = FakeOtelCollector
