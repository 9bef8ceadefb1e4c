"""002#13 distributed tracing: one trace from the request that submits a run, through
the job message and the worker, to the LLM call the provider receives.

The rules under test (contract-agents.md § Tracing, notes-agents.md § Tracing, metrics and
performance): the W3C `traceparent` of `POST /v1/runs` continues in a server span
`POST /v1/runs`, the job message carries its context to the worker (another instance: the
job crosses Redis, not memory), whose consumer span `agents.job` holds a client span
`llm.chat` per LLM call (attributes: run id, step, model, the provider's usage); the
request to the provider carries `llm.chat`'s `traceparent`; spans are exported over
OTLP/HTTP to APEX_OTEL_ENDPOINT with the service name `apex.agents`. Without the setting
nothing is exported and the client's `traceparent` reaches the provider unchanged. The
trace starts at the client: apex.gateway does not forward HTTP requests to apex.agents
(it is the WebSocket edge), so its part of 002#13 is the client's header.
"""

from __future__ import annotations

import os
import uuid

import httpx
import pytest

from agent_tests.client import (
    READ_RUNS,
    RUN_AGENTS,
    AgentUser,
    MakeUser,
    OpenAgents,
    final_run,
    run_body,
)
from apex_testkit import (
    CollectedSpan,
    FakeLlm,
    FakeOtelCollector,
    Platform,
    RedisNamespace,
    completion_tokens,
    prompt_tokens,
    tls_context,
)

TRACING = pytest.mark.bvj(
    segment="platform", goal="An operator follows one agent run across services in one trace",
    mrr=8000, scenario="002#13",
)  # fmt: skip
pytestmark = [TRACING, pytest.mark.L2, pytest.mark.L3]

ANSWER = "Traced answer."
# APEX_OTEL_EXPORT_DELAY of these tests: the service exports every 50 ms, not every second.
EXPORT_DELAY = "0.05"
# How long a span may take to reach the collector (a deadline, not the expected wait).
EXPORT_WAIT = 15.0


def _traceparent() -> tuple[str, str, str]:
    """A client's W3C traceparent (sampled): (header, trace id, span id)."""
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def _parts(traceparent: str | None) -> tuple[str, str]:
    """(trace id, parent span id) of a traceparent header."""
    assert traceparent is not None, "the request carried no traceparent"
    version, trace_id, parent_id, _flags = traceparent.split("-")
    assert version == "00", traceparent
    return trace_id, parent_id


@pytest.fixture
async def runner(make_agent_user: MakeUser) -> AgentUser:
    return await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))


async def _submit(
    client: httpx.AsyncClient, user: AgentUser, traceparent: str | None, **fields: object
) -> str:
    headers = dict(user.headers)
    if traceparent is not None:
        headers["traceparent"] = traceparent
    response = await client.post("/v1/runs", json=run_body(**fields), headers=headers)
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


def _by_name(spans: list[CollectedSpan]) -> dict[str, CollectedSpan]:
    named = {span.name: span for span in spans}
    assert len(named) == len(spans), [s.name for s in spans]
    return named


async def test_the_clients_trace_continues_through_the_job_and_worker_to_the_llm_call(
    clean_platform: Platform,
    agents_with: OpenAgents,
    runner: AgentUser,
    fake_llm: FakeLlm,
    otel_collector: FakeOtelCollector,
    redis_namespace: RedisNamespace,
) -> None:
    traced = {
        "APEX_OTEL_ENDPOINT": otel_collector.endpoint,
        "APEX_OTEL_EXPORT_DELAY": EXPORT_DELAY,
        "APEX_REDIS_PREFIX": f"{redis_namespace.prefix}trace-{uuid.uuid4().hex[:8]}:",
    }
    # The API takes no jobs: a worker of another instance runs the run, so the trace
    # crosses the job message.
    api = await agents_with(APEX_AGENTS_WORKERS="0", **traced)
    fake_llm.reply(ANSWER)
    header, trace_id, client_span = _traceparent()
    async with clean_platform.start("agents", APEX_AGENTS_WORKERS="1", **traced):
        run_id = await _submit(api, runner, header)
        run = await final_run(api, runner, run_id)
        # While the worker's instance runs: its batches are exported every second.
        collected = await otel_collector.wait_for_spans(
            trace_id=trace_id, count=3, timeout=EXPORT_WAIT
        )
    assert (run["status"], run["result"]) == ("succeeded", ANSWER)

    (call,) = fake_llm.calls
    assert _parts(call.traceparent)[0] == trace_id
    spans = _by_name(collected)
    assert set(spans) == {"POST /v1/runs", "agents.job", "llm.chat"}
    server, job, llm = spans["POST /v1/runs"], spans["agents.job"], spans["llm.chat"]
    assert server.parent_span_id == client_span
    assert job.parent_span_id == server.span_id
    assert llm.parent_span_id == job.span_id
    # The provider's request is the LLM span's child.
    assert _parts(call.traceparent)[1] == llm.span_id
    assert {s.service for s in spans.values()} == {"apex.agents"}
    assert (server.kind, job.kind, llm.kind) == (
        "SPAN_KIND_SERVER",
        "SPAN_KIND_CONSUMER",
        "SPAN_KIND_CLIENT",
    )
    assert server.attributes["http.response.status_code"] == 202
    assert job.attributes["apex.run_id"] == run_id
    assert llm.attributes == {
        "apex.run_id": run_id,
        "apex.step": "main",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.system": "llm",
        "gen_ai.usage.input_tokens": prompt_tokens(call.json["messages"]),
        "gen_ai.usage.output_tokens": completion_tokens(ANSWER),
        "apex.llm.attempts": 1,
    }
    assert run["usage"] == {
        "prompt_tokens": llm.attributes["gen_ai.usage.input_tokens"],
        "completion_tokens": llm.attributes["gen_ai.usage.output_tokens"],
    }


async def test_without_a_client_traceparent_the_run_starts_a_trace_of_its_own(
    agents_with: OpenAgents,
    runner: AgentUser,
    fake_llm: FakeLlm,
    otel_collector: FakeOtelCollector,
) -> None:
    client = await agents_with(
        APEX_OTEL_ENDPOINT=otel_collector.endpoint, APEX_OTEL_EXPORT_DELAY=EXPORT_DELAY
    )
    fake_llm.reply(ANSWER)
    run = await final_run(client, runner, await _submit(client, runner, None))
    assert run["status"] == "succeeded", run
    (call,) = fake_llm.calls
    trace_id, parent = _parts(call.traceparent)
    spans = _by_name(
        await otel_collector.wait_for_spans(trace_id=trace_id, count=3, timeout=EXPORT_WAIT)
    )
    assert spans["POST /v1/runs"].parent_span_id is None  # the root
    assert parent == spans["llm.chat"].span_id


async def test_each_workflow_step_is_an_llm_span_of_the_runs_trace(
    agents_with: OpenAgents,
    runner: AgentUser,
    fake_llm: FakeLlm,
    otel_collector: FakeOtelCollector,
) -> None:
    client = await agents_with(
        APEX_OTEL_ENDPOINT=otel_collector.endpoint, APEX_OTEL_EXPORT_DELAY=EXPORT_DELAY
    )
    flow = {
        "steps": [
            {"id": "draft", "agent": "assistant"},
            {"id": "review", "agent": "assistant", "depends_on": ["draft"]},
        ],
        "aggregate": "first",
    }
    header, trace_id, _ = _traceparent()
    run_id = await _submit(client, runner, header, agent=None, workflow=flow)
    run = await final_run(client, runner, run_id)
    assert run["status"] == "succeeded", run
    assert {_parts(c.traceparent)[0] for c in fake_llm.calls} == {trace_id}
    spans = await otel_collector.wait_for_spans(trace_id=trace_id, count=4, timeout=EXPORT_WAIT)
    (job,) = [s for s in spans if s.name == "agents.job"]
    steps = {s.attributes["apex.step"]: s for s in spans if s.name == "llm.chat"}
    assert set(steps) == {"draft", "review"}
    assert {s.parent_span_id for s in steps.values()} == {job.span_id}
    assert {_parts(c.traceparent)[1] for c in fake_llm.calls} == {s.span_id for s in steps.values()}


async def test_without_an_endpoint_nothing_is_exported_and_the_traceparent_passes_on(
    agents_client: httpx.AsyncClient,
    runner: AgentUser,
    fake_llm: FakeLlm,
    otel_collector: FakeOtelCollector,
) -> None:
    fake_llm.reply(ANSWER)
    header, _, _ = _traceparent()
    run = await final_run(agents_client, runner, await _submit(agents_client, runner, header))
    assert run["status"] == "succeeded", run
    (call,) = fake_llm.calls
    # No span of this service: the provider's parent is the client's own span.
    assert call.traceparent == header
    assert otel_collector.requests == []


async def test_a_stopping_instance_flushes_its_spans(
    clean_platform: Platform,
    runner: AgentUser,
    fake_llm: FakeLlm,
    otel_collector: FakeOtelCollector,
    redis_namespace: RedisNamespace,
) -> None:
    settings = {
        "APEX_OTEL_ENDPOINT": otel_collector.endpoint,
        # No export on its schedule during the test: the spans arrive only by the flush.
        "APEX_OTEL_EXPORT_DELAY": "600",
        "APEX_AGENTS_WORKERS": "1",
        "APEX_REDIS_PREFIX": f"{redis_namespace.prefix}flush-{uuid.uuid4().hex[:8]}:",
    }
    fake_llm.reply(ANSWER)
    header, trace_id, _ = _traceparent()
    async with (
        clean_platform.start("agents", **settings) as instance,
        httpx.AsyncClient(base_url=instance.url, timeout=30, verify=tls_context()) as client,
    ):
        run = await final_run(client, runner, await _submit(client, runner, header))
        await instance.stop()
    assert run["status"] == "succeeded", run
    # Stopped: its last batch was exported on the way out, nothing left to wait for.
    names = sorted(s.name for s in otel_collector.spans if s.trace_id == trace_id)
    assert names == ["POST /v1/runs", "agents.job", "llm.chat"]
