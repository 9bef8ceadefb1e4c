"""001#42 version compatibility: versioned agent and tool definitions, and the check that
keeps every agent's tool ranges satisfied.

The rules under test (contract-agents.md § Definitions (Agent), notes-agents.md § Tools
and definitions): a tool's current version is its highest registered one (the built-in
tools are 1.0.0); `POST /v1/agents` refuses (422 `incompatible`) an agent whose range
the current version of a tool it names does not satisfy; `POST /v1/tools` refuses (409
`incompatible`, naming the agent) a tool version outside the range of an agent's latest
version, unless an agent version allowing it is registered first; a refusal registers
nothing (`GET` shows the old state). A run runs its agent's latest version, or the
`agent_version` it names; the model is offered each tool's current version. The
definition routes take the admin token.
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
    admin_headers,
    agent_definition,
    chat_calls,
    error_of,
    final_run,
    run_body,
    submit,
)
from apex_testkit import FakeLlm

VERSIONS = pytest.mark.bvj(
    segment="enterprise", goal="Upgrading a tool never silently breaks an agent built on it",
    mrr=8000, scenario="001#42",
)  # fmt: skip
pytestmark = [VERSIONS, pytest.mark.L2]

CALCULATOR_2 = {
    "name": "calculator",
    "version": "2.0.0",
    "description": "Calculator 2: evaluates an arithmetic expression.",
    "parameters": {
        "type": "object",
        "properties": {"expression": {"type": "string", "minLength": 1}},
        "required": ["expression"],
    },
}


@pytest.fixture
def admin(admin_token: str) -> dict[str, str]:
    return admin_headers(admin_token)


@pytest.fixture
async def runner(make_agent_user: MakeUser) -> AgentUser:
    return await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))


async def register(
    client: httpx.AsyncClient, admin: dict[str, str], kind: str, body: dict[str, Any]
) -> httpx.Response:
    return await client.post(f"/v1/{kind}", json=body, headers=admin)


async def versions_of(client: httpx.AsyncClient, admin: dict[str, str], path: str) -> list[str]:
    response = await client.get(path, headers=admin)
    assert response.status_code == 200, response.text
    return [definition["version"] for definition in response.json()["versions"]]


async def test_an_agent_whose_tool_range_nothing_satisfies_is_refused_and_not_stored(
    agents_client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    body = agent_definition("planner", tools={"calculator": "^2.0"})
    response = await register(agents_client, admin, "agents", body)
    assert response.status_code == 422, response.text
    assert error_of(response) == "incompatible"
    assert "calculator" in response.json()["detail"]
    missing = await agents_client.get("/v1/agents/planner", headers=admin)
    assert missing.status_code == 404, missing.text
    within = agent_definition("planner", tools={"calculator": "~1.0"})
    allowed = await register(agents_client, admin, "agents", within)
    assert allowed.status_code == 201, allowed.text
    assert await versions_of(agents_client, admin, "/v1/agents/planner") == ["1.0.0"]


async def test_a_tool_bump_outside_an_agents_range_is_refused_until_the_agent_allows_it(
    agents_client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    first = agent_definition("planner", tools={"calculator": "^1.0"})
    assert (await register(agents_client, admin, "agents", first)).status_code == 201
    refused = await register(agents_client, admin, "tools", CALCULATOR_2)
    assert refused.status_code == 409, refused.text
    assert error_of(refused) == "incompatible"
    assert "planner" in refused.json()["detail"]
    tool = await agents_client.get("/v1/tools/calculator", headers=admin)
    assert (tool.json()["current"], len(tool.json()["versions"])) == ("1.0.0", 1)
    # The agent updated first (a range allowing both), then the bump is accepted.
    second = agent_definition("planner", version="1.1.0", tools={"calculator": ">=1.0,<3.0"})
    assert (await register(agents_client, admin, "agents", second)).status_code == 201
    accepted = await register(agents_client, admin, "tools", CALCULATOR_2)
    assert accepted.status_code == 201, accepted.text
    assert await versions_of(agents_client, admin, "/v1/tools/calculator") == ["1.0.0", "2.0.0"]


async def test_a_run_gets_its_agent_version_and_the_tools_current_version(
    agents_client: httpx.AsyncClient, admin: dict[str, str], runner: AgentUser, fake_llm: FakeLlm
) -> None:
    for version in ("1.0.0", "1.1.0"):
        body = agent_definition("planner", version=version, tools={"calculator": ">=1.0,<3.0"})
        assert (await register(agents_client, admin, "agents", body)).status_code == 201
    assert (await register(agents_client, admin, "tools", CALCULATOR_2)).status_code == 201
    latest = await final_run(
        agents_client, runner, await submit(agents_client, runner, agent="planner")
    )
    pinned = await final_run(
        agents_client,
        runner,
        await submit(agents_client, runner, agent="planner", agent_version="1.0.0"),
    )
    assert (latest["agent_version"], pinned["agent_version"]) == ("1.1.0", "1.0.0")
    first, second = chat_calls(fake_llm)
    systems = [call.messages[0]["content"] for call in (first, second)]
    assert systems == ["You are planner 1.1.0.", "You are planner 1.0.0."]
    for call in (first, second):
        (offered,) = call.tools
        assert offered["function"]["description"] == CALCULATOR_2["description"]


async def test_a_run_of_an_agent_version_the_current_tools_no_longer_satisfy_is_refused(
    agents_client: httpx.AsyncClient,
    admin: dict[str, str],
    runner: AgentUser,
    fake_llm: FakeLlm,
    agents_db: Any,
) -> None:
    old = agent_definition("planner", tools={"calculator": "^1.0"})
    new = agent_definition("planner", version="2.0.0", tools={"calculator": "^2.0 || ^1.0"})
    assert (await register(agents_client, admin, "agents", old)).status_code == 201
    # `||` is not range syntax: refused, nothing stored.
    response = await register(agents_client, admin, "agents", new)
    assert response.status_code == 422, response.text
    assert error_of(response) == "invalid_range"
    new["tools"] = {"calculator": ">=1.0,<3.0"}
    assert (await register(agents_client, admin, "agents", new)).status_code == 201
    assert (await register(agents_client, admin, "tools", CALCULATOR_2)).status_code == 201
    body = run_body(agent="planner", agent_version="1.0.0")
    refused = await agents_client.post("/v1/runs", json=body, headers=runner.headers)
    assert refused.status_code == 422, refused.text
    assert error_of(refused) == "incompatible"
    assert await agents_db.fetchval("SELECT count(*) FROM agent_runs") == 0
    assert chat_calls(fake_llm) == []


async def test_definitions_need_the_admin_token(
    agents_client: httpx.AsyncClient, runner: AgentUser, admin: dict[str, str]
) -> None:
    body = agent_definition("planner")
    response = await agents_client.post("/v1/agents", json=body, headers=runner.headers)
    assert response.status_code == 401, response.text
    assert set(response.json()) == {"error", "detail"}  # the contract's error shape
    anonymous = await agents_client.post("/v1/agents", json=body)
    assert anonymous.status_code == 401, anonymous.text
    tool = await agents_client.post("/v1/tools", json=CALCULATOR_2, headers=runner.headers)
    assert tool.status_code == 401, tool.text
    # Nothing was registered: no planner, calculator still at its one version.
    missing = await agents_client.get("/v1/agents/planner", headers=admin)
    assert missing.status_code == 404, missing.text
    assert await versions_of(agents_client, admin, "/v1/tools/calculator") == ["1.0.0"]
