"""001#46 LLM provider failover and 001#40 fallback strategies.

The rules under test (contract-agents.md § Behaviours, notes-agents.md § Failover and
breakers): the providers are asked in order, `llm` then `llm_fallback`; a provider that
fails a call past its APEX_LLM_RETRIES (429/5xx/timeout/connection) hands the same request
to the next, whose answer counts: the run's `usage` is the fallback's reported `usage`,
its cost that usage's price, `provider_path` the providers that answered (here
`["llm_fallback"]`), and the failed attempts cost nothing. A provider that refuses the
request itself (a 4xx: `provider_error`) does not fail over. In a workflow each step fails
over on its own, and `provider_path` lists the providers that answered its steps.
"""

from __future__ import annotations

import httpx
import pytest

from agent_tests.client import (
    READ_RUNS,
    RUN_AGENTS,
    AgentUser,
    MakeUser,
    OpenAgents,
    cost_micros,
    final_run,
    submit,
)
from agent_tests.providers import chat_requests, metric
from apex_testkit import FakeLlm, LlmRequest, completion_tokens, prompt_tokens

FAILOVER = pytest.mark.bvj(
    segment="enterprise", goal="One provider's outage never fails a run another one can answer",
    mrr=15000, scenario="001#46",
)  # fmt: skip
STRATEGIES = pytest.mark.bvj(
    segment="enterprise", goal="Each kind of provider failure gets the documented fallback",
    mrr=8000, scenario="001#40",
)  # fmt: skip
pytestmark = [pytest.mark.L2, pytest.mark.L3]

ANSWER = "Paris, answered by the second provider."


@pytest.fixture
async def runner(make_agent_user: MakeUser) -> AgentUser:
    return await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))


@FAILOVER
async def test_past_its_retries_the_primary_hands_the_request_to_the_fallback(
    agents_with: OpenAgents,
    runner: AgentUser,
    fake_llm: FakeLlm,
    fake_llm_fallback: FakeLlm,
    admin_token: str,
) -> None:
    client = await agents_with(APEX_LLM_RETRIES="1", APEX_LLM_CACHE_TTL="0")
    # At L3 the process (of these settings) may have served earlier tests: count deltas.
    series = [("llm", "failed"), ("llm", "retried"), ("llm", "ok"), ("llm_fallback", "ok")]
    before = [await _calls(client, admin_token, *labels) for labels in series]
    fake_llm.fail_next(500, times=2)
    fake_llm.reply("never asked for")
    fake_llm_fallback.reply(ANSWER)
    run = await final_run(client, runner, await submit(client, runner))

    assert run["status"] == "succeeded", run
    assert run["result"] == ANSWER
    assert run["provider_path"] == ["llm_fallback"]
    assert [c.status for c in chat_requests(fake_llm)] == [500, 500]  # the first and one retry
    (answered,) = chat_requests(fake_llm_fallback)
    assert answered.status == 200
    # The same request, and the fallback's reported usage is the one billed.
    assert answered.json == chat_requests(fake_llm)[0].json
    prompt, completion = prompt_tokens(answered.json["messages"]), completion_tokens(ANSWER)
    assert run["usage"] == {"prompt_tokens": prompt, "completion_tokens": completion}
    assert run["cost_micros"] == cost_micros(prompt, completion, 150, 600)  # default table
    # Requests per provider: the primary's failed call and its retry, the fallback's answer.
    after = [await _calls(client, admin_token, *labels) for labels in series]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 0, 1]


async def _calls(client: httpx.AsyncClient, admin_token: str, provider: str, result: str) -> float:
    return await metric(
        client, admin_token, "apex_agents_llm_calls_total", provider=provider, result=result
    )


@FAILOVER
async def test_a_primary_that_answers_is_the_only_provider_asked(
    agents_with: OpenAgents, runner: AgentUser, fake_llm: FakeLlm, fake_llm_fallback: FakeLlm
) -> None:
    client = await agents_with(APEX_LLM_RETRIES="1", APEX_LLM_CACHE_TTL="0")
    fake_llm.fail_next(503)
    fake_llm.reply("the primary, on its retry")
    run = await final_run(client, runner, await submit(client, runner))
    assert run["status"] == "succeeded", run
    assert run["result"] == "the primary, on its retry"
    assert run["provider_path"] == ["llm"]
    assert [c.status for c in chat_requests(fake_llm)] == [503, 200]
    assert chat_requests(fake_llm_fallback) == []


@STRATEGIES
async def test_a_refused_request_does_not_fail_over(
    agents_with: OpenAgents, runner: AgentUser, fake_llm: FakeLlm, fake_llm_fallback: FakeLlm
) -> None:
    client = await agents_with(APEX_LLM_RETRIES="1", APEX_LLM_CACHE_TTL="0")
    fake_llm.fail_next(400, message="bad request")
    run = await final_run(client, runner, await submit(client, runner))
    assert run["status"] == "failed", run
    assert run["error"] == "provider_error"
    assert [c.status for c in chat_requests(fake_llm)] == [400]
    assert chat_requests(fake_llm_fallback) == []  # the request itself is wrong: not retried
    assert run["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}
    assert run["cost_micros"] == 0


@STRATEGIES
async def test_a_rate_limited_primary_fails_over_after_its_retries(
    agents_with: OpenAgents, runner: AgentUser, fake_llm: FakeLlm, fake_llm_fallback: FakeLlm
) -> None:
    client = await agents_with(APEX_LLM_RETRIES="1", APEX_LLM_CACHE_TTL="0")
    fake_llm.fail_next(429, retry_after=0.05, times=2)
    fake_llm_fallback.reply(ANSWER)
    run = await final_run(client, runner, await submit(client, runner))
    assert run["status"] == "succeeded", run
    assert run["result"] == ANSWER
    assert run["provider_path"] == ["llm_fallback"]
    assert [c.status for c in chat_requests(fake_llm)] == [429, 429]
    assert [c.status for c in chat_requests(fake_llm_fallback)] == [200]


def _task(request: LlmRequest) -> str:
    return request.last_user_text.split("\n", 1)[0]


@STRATEGIES
async def test_each_workflow_step_fails_over_on_its_own(
    agents_with: OpenAgents, runner: AgentUser, fake_llm: FakeLlm, fake_llm_fallback: FakeLlm
) -> None:
    client = await agents_with(APEX_LLM_RETRIES="0", APEX_LLM_CACHE_TTL="0")

    def primary(request: LlmRequest) -> str:
        if _task(request) == "task first":
            raise RuntimeError("the primary fails this step")  # the fake answers 500
        return "second, from the primary"

    fake_llm.respond_with(primary)
    fake_llm_fallback.respond_with(lambda request: "first, from the fallback")
    flow = {
        "steps": [
            {"id": "first", "agent": "assistant", "input": "task first"},
            {"id": "second", "agent": "assistant", "input": "task second",
             "depends_on": ["first"]},
        ],
        "aggregate": "first",
    }  # fmt: skip
    run = await final_run(client, runner, await submit(client, runner, agent=None, workflow=flow))

    assert run["status"] == "succeeded", run
    by_step = {s["id"]: (s["status"], s["provider"], s["result"]) for s in run["steps"]}
    assert by_step == {
        "first": ("succeeded", "llm_fallback", "first, from the fallback"),
        "second": ("succeeded", "llm", "second, from the primary"),
    }
    assert run["provider_path"] == ["llm_fallback", "llm"]
    assert [_task(c) for c in chat_requests(fake_llm_fallback)] == ["task first"]
    assert [(_task(c), c.status) for c in chat_requests(fake_llm)] == [
        ("task first", 500),
        ("task second", 200),
    ]
