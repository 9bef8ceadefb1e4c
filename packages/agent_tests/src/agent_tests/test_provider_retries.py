"""001#46 LLM provider failover, the retry half: a 429 or 5xx from the provider is
retried by apex.agents itself (the SDK's own retries are off), up to APEX_LLM_RETRIES
times after the first attempt; past them the call goes to the fallback provider
(test_failover.py), and when that one fails past its retries too the run fails
`providers_unavailable` and costs nothing.
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
    final_run,
    submit,
)
from apex_testkit import FakeLlm, completion_tokens, prompt_tokens

FAILOVER = pytest.mark.bvj(
    segment="enterprise", goal="A provider's passing errors never fail a customer's run",
    mrr=15000, scenario="001#46",
)  # fmt: skip
pytestmark = [FAILOVER, pytest.mark.L2, pytest.mark.L3]


@pytest.fixture
async def runner(make_agent_user: MakeUser) -> AgentUser:
    return await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))


@pytest.mark.L4
async def test_a_429_then_a_500_are_retried_and_the_third_answer_counts(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm
) -> None:
    fake_llm.fail_next(429, retry_after=0.05)
    fake_llm.fail_next(500)
    fake_llm.reply("third time lucky")
    run = await final_run(agents_client, runner, await submit(agents_client, runner, cache=False))
    assert run["status"] == "succeeded", run
    assert run["result"] == "third time lucky"
    calls = fake_llm.calls
    assert [c.status for c in calls] == [429, 500, 200]
    # The same request each time, and only the answered one is billed.
    assert calls[0].json == calls[1].json == calls[2].json
    prompt = prompt_tokens(calls[2].json["messages"])
    assert run["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens("third time lucky"),
    }


async def test_past_the_retries_of_both_providers_the_run_fails_and_costs_nothing(
    agents_with: OpenAgents, runner: AgentUser, fake_llm: FakeLlm, fake_llm_fallback: FakeLlm
) -> None:
    client = await agents_with(APEX_LLM_RETRIES="1")
    for fake in (fake_llm, fake_llm_fallback):
        fake.fail_next(503, times=2)
        fake.reply("never asked for")
    run = await final_run(client, runner, await submit(client, runner, cache=False))
    assert run["status"] == "failed", run
    assert run["error"] == "providers_unavailable"
    assert [c.status for c in fake_llm.calls] == [503, 503]
    assert [c.status for c in fake_llm_fallback.calls] == [503, 503]
    assert run["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}
    assert run["cost_micros"] == 0


@pytest.mark.L4
async def test_a_refused_request_is_not_retried(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm
) -> None:
    fake_llm.fail_next(400, message="bad request")
    run = await final_run(agents_client, runner, await submit(agents_client, runner, cache=False))
    assert run["status"] == "failed", run
    assert run["error"] == "provider_error"
    assert [c.status for c in fake_llm.calls] == [400]
