"""apex.agents' traces (OpenTelemetry SDK), exported over OTLP/HTTP to APEX_OTEL_ENDPOINT.

One trace follows a run from the request that submits it to its LLM calls, carried in
W3C Trace Context (``traceparent``):

- ``POST /v1/runs`` continues the client's ``traceparent`` (none: a new trace) in a
  server span (:class:`ServerSpans`, a middleware of the app);
- the job message carries that span's ``traceparent`` (:func:`current_traceparent`), so
  the worker that takes the job, in this process or another, continues the trace in a
  consumer span ``agents.job`` (:meth:`Tracing.traced`);
- each LLM call of the run is a client span ``llm.chat`` (:meth:`Tracing.llm_call`), and
  the SDK's request to the provider carries its ``traceparent`` (:func:`trace_headers`).

Spans go through a ``BatchSpanProcessor`` (exported every APEX_OTEL_EXPORT_DELAY, 1 s
by default, and flushed when the service stops). Without APEX_OTEL_ENDPOINT the tracer is the API's
no-op tracer: no span is recorded nor exported, and a client's ``traceparent`` is still
passed on unchanged (the no-op tracer keeps the incoming span context current).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, TypeVar

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from apex.agents.llm import Completion

__all__ = [
    "SERVICE_NAME",
    "TRACEPARENT",
    "ServerSpans",
    "Tracing",
    "current_traceparent",
    "trace_headers",
]

SERVICE_NAME: Final = "apex.agents"
TRACEPARENT: Final = "traceparent"
# Seconds an export may take before the exporter gives up on it.
_EXPORT_TIMEOUT: Final = 5.0
# Requests that get a server span: the API's, not health checks nor metrics scrapes.
_TRACED_PREFIX: Final = "/v1/"

_PROPAGATOR: Final = TraceContextTextMapPropagator()
T = TypeVar("T")


class Tracing:
    """The service's tracer: the SDK's, exporting to ``endpoint`` every ``export_delay``
    seconds; or the no-op tracer."""

    def __init__(self, endpoint: str | None, export_delay: float = 1.0) -> None:
        self._provider: TracerProvider | None = None
        if endpoint is None:
            self.tracer: trace.Tracer = trace.NoOpTracer()
            return
        # shutdown_on_exit=False: the service shuts it down itself (an atexit hook per
        # provider would keep every L2 app's provider alive until the process ends).
        provider = TracerProvider(
            resource=Resource.create({"service.name": SERVICE_NAME}), shutdown_on_exit=False
        )
        exporter = OTLPSpanExporter(endpoint=endpoint, timeout=_EXPORT_TIMEOUT)
        provider.add_span_processor(
            BatchSpanProcessor(exporter, schedule_delay_millis=export_delay * 1000)
        )
        self._provider = provider
        self.tracer = provider.get_tracer(SERVICE_NAME)

    @property
    def exporting(self) -> bool:
        return self._provider is not None

    def shutdown(self) -> None:
        """Export the spans still in the batch and stop (blocking: run it in a thread)."""
        if self._provider is not None:
            self._provider.shutdown()

    async def traced(
        self,
        work: Awaitable[T],
        name: str,
        *,
        traceparent: str | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
    ) -> T:
        """``work`` awaited in a span ``name``: a child of ``traceparent`` when given (a
        job's), else of the current span."""
        parent = None if traceparent is None else _PROPAGATOR.extract({TRACEPARENT: traceparent})
        with self.tracer.start_as_current_span(
            name, context=parent, kind=kind, attributes=attributes
        ):
            return await work

    async def llm_call(
        self,
        call: Awaitable[Completion],
        *,
        run_id: uuid.UUID,
        step: str,
        model: str,
        provider: str,
        answered_by: Callable[[], str] | None = None,
    ) -> Completion:
        """One LLM call (its retries included) in a client span ``llm.chat`` with the
        provider's usage; the SDK's requests carry the span's ``traceparent``.
        ``provider`` names who may answer (the failover chain); ``answered_by``, read after
        the answer, who did."""
        with self.tracer.start_as_current_span(
            "llm.chat",
            kind=SpanKind.CLIENT,
            attributes={
                "apex.run_id": str(run_id),
                "apex.step": step,
                "gen_ai.request.model": model,
                "gen_ai.system": provider,
            },
        ) as span:
            completion = await call
            span.set_attributes(
                {
                    "gen_ai.usage.input_tokens": completion.prompt_tokens,
                    "gen_ai.usage.output_tokens": completion.completion_tokens,
                    "apex.llm.attempts": completion.attempts,
                }
            )
            if answered_by is not None:
                span.set_attribute("gen_ai.system", answered_by())
            return completion


def trace_headers() -> dict[str, str]:
    """The current span's ``traceparent`` (and ``tracestate``) as request headers; empty
    when there is no span."""
    headers: dict[str, str] = {}
    _PROPAGATOR.inject(headers)
    return headers


def current_traceparent() -> str | None:
    """The current span's ``traceparent``, for a job message; None without a span."""
    return trace_headers().get(TRACEPARENT)


class ServerSpans:
    """ASGI middleware: each ``/v1/`` request in a server span continuing the client's
    ``traceparent``, named ``<method> <route>`` once routed (the tracer is the running
    service's, found on ``app.state.service.tracing``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracing = _tracing_of(scope)
        if (
            scope["type"] != "http"
            or tracing is None
            or not scope["path"].startswith(_TRACED_PREFIX)
        ):
            await self.app(scope, receive, send)
            return
        carrier = {
            key.decode("latin-1"): value.decode("latin-1")
            for key, value in scope["headers"]
            if key in (b"traceparent", b"tracestate")
        }
        method = scope["method"]
        with tracing.tracer.start_as_current_span(
            f"{method} {scope['path']}",
            context=_PROPAGATOR.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        ) as span:

            async def send_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                await send(message)

            await self.app(scope, receive, send_status)
            route = getattr(scope.get("route"), "path", None)
            if isinstance(route, str):
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)


def _tracing_of(scope: Scope) -> Tracing | None:
    app = scope.get("app")
    service = getattr(getattr(app, "state", None), "service", None)
    tracing = getattr(service, "tracing", None)
    return tracing if isinstance(tracing, Tracing) else None
