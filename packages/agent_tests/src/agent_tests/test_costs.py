"""001#48 cost tracking: a run's usage is the provider's reported `usage`, and its cost
the model table's price of it.

The rules under test (contract-agents.md, notes-agents.md): a run of the built-in agent
`assistant` completes with the provider's answer; `usage` is exactly what the provider
reported (the fake's estimator: `apex_testkit.prompt_tokens` of the messages it received,
`completion_tokens` of its answer); `cost_micros` is `ceil((prompt * input_micros_per_1k
+ completion * output_micros_per_1k) / 1000)` under APEX_MODELS (default table:
gpt-4o-mini 150/600); the same idempotency key again is the first run, with no second
LLM call.
"""

from __future__ import annotations

import json
from typing import Any

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
    run_body,
    submit,
)
from apex_testkit import FakeLlm, completion_tokens, prompt_tokens

COSTS = pytest.mark.bvj(
    segment="enterprise", goal="Every LLM token a tenant's agents spend is billed at its price",
    mrr=15000, scenario="001#48",
)  # fmt: skip
# The part of the catalogue's combined 003 agents row these tests prove.
PIPELINE_COSTS = pytest.mark.bvj(
    segment="enterprise", goal="The agent pipeline records every call's cost",
    mrr=15000, scenario="003:cost tracking",
)  # fmt: skip
pytestmark = [COSTS, PIPELINE_COSTS, pytest.mark.L2, pytest.mark.L3]

ANSWER = "Paris is the capital of France."
# Prices no default has: the cost is the table's, not a constant of the service.
PRICES = {"gpt-4o-mini": {"context_window": 128000, "input_micros_per_1k": 1000,
                          "output_micros_per_1k": 3000}}  # fmt: skip


@pytest.fixture
async def runner(make_agent_user: MakeUser) -> AgentUser:
    return await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))


def _reported(fake_llm: FakeLlm, answer: str) -> tuple[int, int]:
    """The usage the fake reported for its one chat completion."""
    (call,) = [c for c in fake_llm.calls if c.path.endswith("/chat/completions")]
    return prompt_tokens(call.json["messages"]), completion_tokens(answer)


async def test_a_run_completes_with_the_answer_and_the_reported_usage(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm, agents_db: Any
) -> None:
    fake_llm.reply(ANSWER)
    run_id = await submit(agents_client, runner)
    run = await final_run(agents_client, runner, run_id)
    assert run["status"] == "succeeded", run
    assert run["result"] == ANSWER
    prompt, completion = _reported(fake_llm, ANSWER)
    assert run["usage"] == {"prompt_tokens": prompt, "completion_tokens": completion}
    # The documented default table: gpt-4o-mini at 150 / 600 micros per 1,000 tokens.
    assert run["cost_micros"] == cost_micros(prompt, completion, 150, 600)
    assert run["provider_path"] == ["llm"]
    (call,) = fake_llm.calls
    assert call.json["model"] == "gpt-4o-mini"
    assert call.json["messages"][-1] == {"role": "user", "content": run_body()["input"]}
    stored = await agents_db.fetchrow(
        "SELECT tenant_id::text, user_id, status FROM agent_runs WHERE id = $1::uuid", run_id
    )
    assert tuple(stored) == (runner.tenant_id, runner.user_id, "succeeded")


async def test_the_cost_is_the_model_tables_price_of_the_usage(
    agents_with: OpenAgents, runner: AgentUser, fake_llm: FakeLlm, admin_token: str
) -> None:
    client = await agents_with(APEX_MODELS=json.dumps(PRICES))
    fake_llm.reply(ANSWER)
    run = await final_run(client, runner, await submit(client, runner))
    prompt, completion = _reported(fake_llm, ANSWER)
    assert run["cost_micros"] == prompt + 3 * completion
    metrics = await client.get("/metrics", headers={"Authorization": f"Bearer {admin_token}"})
    assert metrics.status_code == 200, metrics.text
    assert f'apex_agents_cost_micros_total{{model="gpt-4o-mini"}} {prompt + 3 * completion}.0' in (
        metrics.text
    )


async def test_the_same_idempotency_key_is_the_first_run_and_calls_the_llm_once(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm, agents_db: Any
) -> None:
    fake_llm.reply(ANSWER)
    body = run_body()
    first = await agents_client.post("/v1/runs", json=body, headers=runner.headers)
    assert first.status_code == 202, first.text
    run_id = first.json()["run_id"]
    await final_run(agents_client, runner, run_id)
    again = await agents_client.post(
        "/v1/runs", json={**body, "input": "something else"}, headers=runner.headers
    )
    assert again.status_code == 200, again.text
    assert again.json() == {"run_id": run_id, "status": "succeeded"}
    assert len(fake_llm.calls) == 1
    assert await agents_db.fetchval("SELECT count(*) FROM agent_runs") == 1
