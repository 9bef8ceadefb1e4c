"""003 tool authorization: a tool with a permission runs only for a user who holds it.

The rules under test (contract-agents.md § Who is asking, notes-agents.md § Tools and
definitions): the built-in `lookup` needs `tools:lookup`; the run keeps the permissions
its user held at submit; a call of a tool the user may not use is never executed, the
model gets the tool message `permission denied: <permission>` and the run records the
call with `allowed: false`; a user holding the permission gets the tool's real result.
"""

from __future__ import annotations

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
    final_run,
    submit,
)
from apex_testkit import FakeLlm, LlmReply, ToolCall

AUTHORIZATION = pytest.mark.bvj(
    segment="enterprise", goal="Agents can only use the tools their user is allowed to use",
    mrr=20000, scenario="003:tool authorization",
)  # fmt: skip
pytestmark = [AUTHORIZATION, pytest.mark.L2, pytest.mark.L3]

LOOKUP = "tools:lookup"
AGENT = "geographer"


@pytest.fixture(autouse=True)
async def geographer(agents_client: httpx.AsyncClient, admin_token: str) -> None:
    body = agent_definition(AGENT, tools={"lookup": "^1.0"})
    response = await agents_client.post("/v1/agents", json=body, headers=admin_headers(admin_token))
    assert response.status_code == 201, response.text


async def tool_events(
    client: httpx.AsyncClient, user: AgentUser, run_id: str
) -> list[tuple[str, str]]:
    """The run's tool events in its audit trail: (kind, tool)."""
    response = await client.get(f"/v1/runs/{run_id}/audit", headers=user.headers)
    assert response.status_code == 200, response.text
    return [
        (e["kind"], e["data"]["tool"])
        for e in response.json()["events"]
        if e["kind"].startswith("tool.")
    ]


def script(fake_llm: FakeLlm) -> None:
    ask = ToolCall("lookup", {"key": "Kenya"}, id="call_1")
    fake_llm.reply(LlmReply(tool_calls=(ask,)), "Done.")


async def test_a_tool_the_user_may_not_use_never_runs_and_the_model_is_told(
    agents_client: httpx.AsyncClient, make_agent_user: MakeUser, fake_llm: FakeLlm
) -> None:
    user = await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))
    script(fake_llm)
    run = await final_run(agents_client, user, await submit(agents_client, user, agent=AGENT))
    assert (run["status"], run["result"]) == ("succeeded", "Done.")
    _, second = chat_calls(fake_llm)
    denied = f"permission denied: {LOOKUP}"
    assert second.messages[-1] == {"role": "tool", "tool_call_id": "call_1", "content": denied}
    assert "Nairobi" not in str(second.messages)  # the tool's answer never reached the model
    (record,) = run["tool_calls"]
    assert (record["name"], record["allowed"], record["result"], record["error"]) == (
        "lookup",
        False,
        None,
        "permission_denied",
    )
    assert await tool_events(agents_client, user, run["run_id"]) == [("tool.denied", "lookup")]


async def test_a_user_holding_the_permission_gets_the_tool_run(
    agents_client: httpx.AsyncClient, make_agent_user: MakeUser, fake_llm: FakeLlm
) -> None:
    user = await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS, LOOKUP))
    script(fake_llm)
    run = await final_run(agents_client, user, await submit(agents_client, user, agent=AGENT))
    assert (run["status"], run["result"]) == ("succeeded", "Done.")
    _, second = chat_calls(fake_llm)
    assert second.messages[-1] == {"role": "tool", "tool_call_id": "call_1", "content": "Nairobi"}
    (record,) = run["tool_calls"]
    assert (record["name"], record["allowed"], record["result"]) == ("lookup", True, "Nairobi")
    assert await tool_events(agents_client, user, run["run_id"]) == [("tool.called", "lookup")]
