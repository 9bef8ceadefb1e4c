"""Tools together with the quality gate and the response cache: one agent call is a
tool-call loop per quality-gate attempt, and a tool needing a permission keeps the
answer out of the shared cache.

The rules under test (notes-agents.md § Tools with the context window, the cache and the
quality gate): each attempt is a whole tool-call conversation whose last answer the gate
checks; a re-ask starts again from the request plus the failing answer and the
follow-up, so the model may call its tools again; the run's `tool_calls` are every
attempt's, in order, and its usage the sum over every request. A request offering a
tool that needs a permission is never cached. An agent registered with a `temperature`
asks at it, and only temperature 0 is cached (§ Context, quality gate and response
cache).
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
from apex_testkit import FakeLlm, LlmReply, ToolCall, completion_tokens, prompt_tokens

GATE = pytest.mark.bvj(
    segment="enterprise", goal="Answers that use tools are checked before anyone pays for them",
    mrr=10000, scenario="001#49",
)  # fmt: skip
CACHE = pytest.mark.bvj(
    segment="enterprise", goal="A cached answer never leaks what only some users may see",
    mrr=10000, scenario="001#50",
)  # fmt: skip
pytestmark = [pytest.mark.L2]

LOOKUP = "tools:lookup"


async def register(client: httpx.AsyncClient, admin_token: str, body: dict[str, object]) -> None:
    response = await client.post("/v1/agents", json=body, headers=admin_headers(admin_token))
    assert response.status_code == 201, response.text


@pytest.fixture
async def runner(make_agent_user: MakeUser) -> AgentUser:
    return await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS, LOOKUP))


def calculate(expression: str, call_id: str) -> LlmReply:
    return LlmReply(tool_calls=(ToolCall("calculator", {"expression": expression}, id=call_id),))


@GATE
async def test_a_reask_runs_the_tools_again_and_the_run_keeps_every_attempts_calls(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm, admin_token: str
) -> None:
    body = agent_definition("gated_calc", tools={"calculator": "^1.0"})
    await register(agents_client, admin_token, body)
    # Attempt 1: a tool call, then an empty answer (refused by the gate); attempt 2: a
    # tool call, then a good answer.
    fake_llm.reply(calculate("1 + 1", "call_1"), "  ", calculate("2 + 2", "call_2"), "It is 4.")
    run = await final_run(
        agents_client, runner, await submit(agents_client, runner, agent="gated_calc")
    )
    assert (run["status"], run["result"]) == ("succeeded", "It is 4."), run
    calls = chat_calls(fake_llm)
    assert len(calls) == 4
    reask = calls[2].messages
    assert reask[-2] == {"role": "assistant", "content": "  "}
    assert reask[-1]["role"] == "user"
    assert "did not pass the quality check" in reask[-1]["content"]
    assert [(c["id"], c["result"]) for c in run["tool_calls"]] == [
        ("call_1", "2"),
        ("call_2", "4"),
    ]
    asked = [reply["tool_calls"] for reply in (calls[1].messages[-2], calls[3].messages[-2])]
    prompt = sum(prompt_tokens(call.messages, call.tools) for call in calls)
    completion = (
        completion_tokens(None, asked[0])
        + completion_tokens("  ")
        + completion_tokens(None, asked[1])
        + completion_tokens("It is 4.")
    )
    assert run["usage"] == {"prompt_tokens": prompt, "completion_tokens": completion}


@CACHE
async def test_a_request_offering_a_tool_that_needs_a_permission_is_never_cached(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm, admin_token: str
) -> None:
    await register(agents_client, admin_token, agent_definition("finder", tools={"lookup": "^1.0"}))
    fake_llm.reply("Nairobi.", "Nairobi, again.")
    first = await final_run(
        agents_client, runner, await submit(agents_client, runner, agent="finder")
    )
    again = await final_run(
        agents_client, runner, await submit(agents_client, runner, agent="finder")
    )
    assert (first["result"], first["cached"]) == ("Nairobi.", False), first
    assert (again["result"], again["cached"]) == ("Nairobi, again.", False), again
    assert len(chat_calls(fake_llm)) == 2


@CACHE
async def test_an_agent_asks_at_its_registered_temperature_and_is_not_cached(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm, admin_token: str
) -> None:
    await register(agents_client, admin_token, agent_definition("warm", temperature=0.7))
    fake_llm.reply("One.", "Two.")
    first = await final_run(
        agents_client, runner, await submit(agents_client, runner, agent="warm")
    )
    again = await final_run(
        agents_client, runner, await submit(agents_client, runner, agent="warm")
    )
    assert (first["result"], again["result"], again["cached"]) == ("One.", "Two.", False)
    assert [call.json["temperature"] for call in chat_calls(fake_llm)] == [0.7, 0.7]
