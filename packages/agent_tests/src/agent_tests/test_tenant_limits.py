"""001#36 resource allocation and limits, per tenant: no more than
APEX_TENANT_MAX_RUNNING of a tenant's runs run at once (the others wait `queued`, other
tenants' runs are not held up); a submit when the tenant's runs have used
APEX_TENANT_TOKEN_BUDGET tokens today (UTC) is 429 `token_budget_exceeded`, and one
when it has APEX_TENANT_MAX_QUEUED runs queued is 429 `too_many_runs`, nothing stored or
queued either way (contract, Routes and Settings; notes-agents.md § Job queue).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from agent_tests.client import (
    READ_RUNS,
    RUN_AGENTS,
    AgentUser,
    MakeUser,
    OpenAgents,
    error_of,
    final_run,
    run_body,
    submit,
    until,
)
from agent_tests.queues import queue_report
from apex_testkit import FakeLlm

LIMITS = pytest.mark.bvj(
    segment="enterprise", goal="One tenant cannot take the platform's capacity or overspend",
    mrr=10000, scenario="001#36",
)  # fmt: skip
# The part of the catalogue's combined 003 agents row these tests prove.
PIPELINE_POOL = pytest.mark.bvj(
    segment="enterprise", goal="The agent pipeline shares its workers fairly between tenants",
    mrr=10000, scenario="003:resource pool",
)  # fmt: skip
pytestmark = [LIMITS, PIPELINE_POOL, pytest.mark.L2, pytest.mark.L3]

PERMISSIONS = (RUN_AGENTS, READ_RUNS)


async def _status(client: httpx.AsyncClient, user: AgentUser, run_id: str) -> str:
    response = await client.get(f"/v1/runs/{run_id}", headers=user.headers)
    assert response.status_code == 200, response.text
    status: str = response.json()["status"]
    return status


async def test_a_tenants_runs_beyond_its_running_limit_wait_and_others_are_not_held_up(
    agents_with: OpenAgents, make_agent_user: MakeUser, fake_llm: FakeLlm
) -> None:
    client = await agents_with(APEX_TENANT_MAX_RUNNING="1", APEX_AGENTS_WORKERS="3")
    busy = await make_agent_user(permissions=PERMISSIONS)
    other = await make_agent_user(permissions=PERMISSIONS)
    fake_llm.hang_next()
    first = await submit(client, busy, input="busy 1")
    await until(lambda: fake_llm.hanging == 1, message="the tenant's first run is in flight")
    waiting = [await submit(client, busy, input=f"busy {n}") for n in (2, 3)]
    # Queued after the waiting ones: when it is done, the workers have read theirs.
    others = await final_run(client, other, await submit(client, other, input="other"))
    assert others["status"] == "succeeded"
    assert [await _status(client, busy, r) for r in waiting] == ["queued", "queued"]
    assert len(fake_llm.calls) == 2  # the hung run's and the other tenant's: no more
    # The slot passes to one waiting run, and only one.
    fake_llm.hang_next()
    await client.post(f"/v1/runs/{first}/cancel", headers=busy.headers)
    await until(
        lambda: len(fake_llm.calls) == 3 and fake_llm.hanging == 1,
        message="one waiting run took the slot",
    )
    statuses = {r: await _status(client, busy, r) for r in waiting}
    assert sorted(statuses.values()) == ["queued", "running"]
    running = next(r for r, s in statuses.items() if s == "running")
    await client.post(f"/v1/runs/{running}/cancel", headers=busy.headers)
    last = next(r for r, s in statuses.items() if s == "queued")
    assert (await final_run(client, busy, last))["status"] == "succeeded"
    assert len(fake_llm.calls) == 4  # each run once


async def test_a_submit_past_the_token_budget_is_429_and_other_tenants_go_on(
    agents_with: OpenAgents,
    make_agent_user: MakeUser,
    fake_llm: FakeLlm,
    agents_db: Any,
    admin_token: str,
) -> None:
    spender = await make_agent_user(permissions=PERMISSIONS)
    other = await make_agent_user(permissions=PERMISSIONS)
    default = await agents_with(APEX_AGENTS_WORKERS="1")
    first_body = run_body()
    first = await default.post("/v1/runs", json=first_body, headers=spender.headers)
    assert first.status_code == 202, first.text
    run = await final_run(default, spender, first.json()["run_id"])
    spent = run["usage"]["prompt_tokens"] + run["usage"]["completion_tokens"]
    assert spent > 0
    # A budget the tenant's runs today have reached: nothing more.
    reached = await agents_with(APEX_AGENTS_WORKERS="1", APEX_TENANT_TOKEN_BUDGET=str(spent))
    refused = await reached.post("/v1/runs", json=run_body(), headers=spender.headers)
    assert refused.status_code == 429, refused.text
    assert error_of(refused) == "token_budget_exceeded"
    assert await agents_db.fetchval("SELECT count(*) FROM agent_runs") == 1
    report = await queue_report(reached, admin_token)
    assert all(q["depth"] == 0 for q in report["queues"].values())
    # The same key as the first run is that run, budget or not.
    again = await reached.post("/v1/runs", json=first_body, headers=spender.headers)
    assert again.status_code == 200, again.text
    assert again.json()["run_id"] == run["run_id"]
    # Another tenant is not held up by it.
    others = await final_run(reached, other, await submit(reached, other))
    assert others["status"] == "succeeded"
    # One token of room is room for a run.
    room = await agents_with(APEX_AGENTS_WORKERS="1", APEX_TENANT_TOKEN_BUDGET=str(spent + 1))
    allowed = await final_run(room, spender, await submit(room, spender))
    assert allowed["status"] == "succeeded"
    assert len(fake_llm.calls) == 3
    assert await agents_db.fetchval("SELECT count(*) FROM agent_runs") == 3


async def test_a_submit_past_the_queued_cap_is_429_and_other_tenants_go_on(
    agents_with: OpenAgents,
    make_agent_user: MakeUser,
    fake_llm: FakeLlm,
    agents_db: Any,
    admin_token: str,
) -> None:
    # No worker tasks: submitted runs stay queued.
    client = await agents_with(APEX_AGENTS_WORKERS="0", APEX_TENANT_MAX_QUEUED="2")
    crowded = await make_agent_user(permissions=PERMISSIONS)
    other = await make_agent_user(permissions=PERMISSIONS)
    for _ in range(2):
        await submit(client, crowded)
    refused = await client.post("/v1/runs", json=run_body(), headers=crowded.headers)
    assert refused.status_code == 429, refused.text
    assert error_of(refused) == "too_many_runs"
    assert await agents_db.fetchval("SELECT count(*) FROM agent_runs") == 2
    assert (await queue_report(client, admin_token))["queues"]["normal"]["depth"] == 2
    await submit(client, other)
    assert await agents_db.fetchval("SELECT count(*) FROM agent_runs") == 3
    assert (await queue_report(client, admin_token))["queues"]["normal"]["depth"] == 3
    assert fake_llm.calls == []
