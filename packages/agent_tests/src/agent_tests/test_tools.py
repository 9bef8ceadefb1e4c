"""001#32 tool loading and validation: an agent's tools run for real when the model asks,
their arguments validated against the tool's JSON Schema first.

The rules under test (contract-agents.md § Definitions (Tool), notes-agents.md § Tools and
definitions): the built-in tools are deterministic (`calculator` evaluates arithmetic);
a tool call's result goes back to the model as a `tool` message answering the call's id,
and the model's next request carries it; invalid arguments: the model gets the
validation error as the tool result once, a second invalid call fails the step
`invalid_tool_arguments`; more than 8 rounds of tool calls fail it `too_many_tool_rounds`;
usage is the sum of every round's reported usage. A tool definition whose `parameters`
is not a JSON Schema is refused at registration (422 `invalid_schema`), nothing stored.
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
    submit,
)
from apex_testkit import (
    FakeLlm,
    LlmReply,
    LlmRequest,
    ToolCall,
    completion_tokens,
    prompt_tokens,
)

TOOLS = pytest.mark.bvj(
    segment="enterprise", goal="Agents act through tools whose inputs are checked before they run",
    mrr=10000, scenario="001#32",
)  # fmt: skip
pytestmark = [TOOLS, pytest.mark.L2]

AGENT = "calc"


@pytest.fixture
async def runner(make_agent_user: MakeUser) -> AgentUser:
    return await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))


@pytest.fixture
async def calc_agent(agents_client: httpx.AsyncClient, admin_token: str) -> str:
    """An agent with the built-in calculator and echo (ranges ^1.0)."""
    body = agent_definition(AGENT, tools={"calculator": "^1.0", "echo": "^1.0"})
    response = await agents_client.post("/v1/agents", json=body, headers=admin_headers(admin_token))
    assert response.status_code == 201, response.text
    return AGENT


def calculate(expression: Any, call_id: str) -> LlmReply:
    return LlmReply(tool_calls=(ToolCall("calculator", {"expression": expression}, id=call_id),))


def tool_message(request: LlmRequest) -> dict[str, Any]:
    """The last message of a request: the tool result it carries."""
    message = request.messages[-1]
    assert message["role"] == "tool", request.messages
    return message


async def test_a_tool_call_runs_the_real_tool_and_the_model_gets_its_exact_result(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm, calc_agent: str
) -> None:
    fake_llm.reply(calculate("(2 + 3) * 4 - 7 / 2", "call_1"), "It is 16.5.")
    run = await final_run(agents_client, runner, await submit(agents_client, runner, agent=AGENT))
    assert run["status"] == "succeeded", run
    assert run["result"] == "It is 16.5."
    first, second = chat_calls(fake_llm)
    offered = sorted(tool["function"]["name"] for tool in first.tools)
    assert offered == ["calculator", "echo"]
    assert tool_message(second) == {"role": "tool", "tool_call_id": "call_1", "content": "16.5"}
    asked = second.messages[-2]["tool_calls"]
    assert [(c["id"], c["function"]["name"]) for c in asked] == [("call_1", "calculator")]
    (record,) = run["tool_calls"]
    assert (record["name"], record["version"], record["allowed"], record["result"]) == (
        "calculator",
        "1.0.0",
        True,
        "16.5",
    )
    # Usage: both rounds' reports summed.
    prompt = prompt_tokens(first.messages, first.tools) + prompt_tokens(
        second.messages, second.tools
    )
    completion = completion_tokens(None, asked) + completion_tokens("It is 16.5.")
    assert run["usage"] == {"prompt_tokens": prompt, "completion_tokens": completion}


async def test_invalid_arguments_get_the_error_once_then_the_step_fails(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm, calc_agent: str
) -> None:
    fake_llm.reply(
        calculate(42, "call_1"),
        LlmReply(tool_calls=(ToolCall("calculator", {"expr": "1 + 1"}, id="call_2"),)),
        "never asked for",
    )
    run = await final_run(agents_client, runner, await submit(agents_client, runner, agent=AGENT))
    assert (run["status"], run["error"]) == ("failed", "invalid_tool_arguments")
    calls = chat_calls(fake_llm)
    assert len(calls) == 2  # the second invalid call ends the step: no third request
    told = tool_message(calls[1])
    assert told["tool_call_id"] == "call_1"
    assert told["content"].startswith("invalid arguments: ")
    assert "42 is not of type 'string'" in told["content"]


async def test_one_invalid_call_then_a_valid_one_runs_the_tool(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm, calc_agent: str
) -> None:
    fake_llm.reply(calculate("", "call_1"), calculate("6 * 7", "call_2"), "42.")
    run = await final_run(agents_client, runner, await submit(agents_client, runner, agent=AGENT))
    assert (run["status"], run["result"]) == ("succeeded", "42.")
    calls = chat_calls(fake_llm)
    assert len(calls) == 3
    assert tool_message(calls[1])["content"].startswith("invalid arguments: ")
    assert tool_message(calls[2]) == {"role": "tool", "tool_call_id": "call_2", "content": "42"}
    assert [r["error"] for r in run["tool_calls"]] == ["invalid_arguments", None]


async def test_more_than_eight_rounds_of_tool_calls_fail_the_step(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm, calc_agent: str
) -> None:
    def always_echo(request: LlmRequest) -> LlmReply:
        return LlmReply(tool_calls=(ToolCall("echo", {"text": "again"}),))

    fake_llm.respond_with(always_echo)
    run = await final_run(agents_client, runner, await submit(agents_client, runner, agent=AGENT))
    assert (run["status"], run["error"]) == ("failed", "too_many_tool_rounds")
    assert len(chat_calls(fake_llm)) == 9  # 8 rounds answered, the 9th request refused


async def test_a_tool_whose_parameters_are_not_a_json_schema_is_refused_and_not_stored(
    agents_client: httpx.AsyncClient, admin_token: str
) -> None:
    headers = admin_headers(admin_token)
    bad = {
        "name": "echo",
        "version": "1.1.0",
        "description": "Echo, typed wrong.",
        "parameters": {"type": "object", "properties": {"text": {"type": "strnig"}}},
    }
    response = await agents_client.post("/v1/tools", json=bad, headers=headers)
    assert response.status_code == 422, response.text
    assert error_of(response) == "invalid_schema"
    unknown = {**bad, "name": "shell", "parameters": {"type": "object"}}
    response = await agents_client.post("/v1/tools", json=unknown, headers=headers)
    assert response.status_code == 422, response.text
    assert error_of(response) == "unknown_tool"
    echo = await agents_client.get("/v1/tools/echo", headers=headers)
    assert echo.status_code == 200, echo.text
    assert echo.json()["current"] == "1.0.0"
    assert [v["version"] for v in echo.json()["versions"]] == ["1.0.0"]
    shell = await agents_client.get("/v1/tools/shell", headers=headers)
    assert shell.status_code == 404, shell.text


async def test_a_workflow_steps_tool_calls_are_on_its_step(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm, calc_agent: str
) -> None:
    fake_llm.reply(calculate("2 ** 10", "call_1"), "1024")
    flow = {"steps": [{"id": "sum", "agent": AGENT, "depends_on": []}], "aggregate": "first"}
    run_id = await submit(agents_client, runner, agent=None, workflow=flow)
    run = await final_run(agents_client, runner, run_id)
    assert (run["status"], run["result"]) == ("succeeded", "1024")
    (step,) = run["steps"]
    assert [(c["name"], c["allowed"], c["result"]) for c in step["tool_calls"]] == [
        ("calculator", True, "1024")
    ]
    assert tool_message(chat_calls(fake_llm)[1])["content"] == "1024"
