"""001#47 context window management: a request is fitted into its model's context window
before any LLM call, and refused when it cannot fit.

The rules under test (contract-agents.md § Behaviours "Context window", notes-agents.md §
Context, quality gate and response cache): the estimate of a message is
`ceil(utf8_bytes / 4) + 4` (computed here from that formula, not the kit's estimator);
a request fits when its messages' estimates sum to at most `context_window - max_tokens`
(APEX_MODELS; the built-in agents' max_tokens is 256); the oldest messages that are
neither system nor the last user message are dropped until it fits; when the system and
the last user message alone do not fit: `context_too_large` and no LLM call: at submit
(422, nothing stored) when the run's or a step's own input cannot fit, at the worker
(the step fails `context_too_large`) when a step's dependencies' outputs make it too
large. A conversation grows past its first request on a quality-gate re-ask (the failing
answer and the follow-up are added): that is where trimming happens.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
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
)
from apex_testkit import FakeLlm, LlmRequest

CONTEXT = pytest.mark.bvj(
    segment="enterprise", goal="Requests fit their model's window, or are refused before they cost",
    mrr=8000, scenario="001#47",
)  # fmt: skip
pytestmark = [CONTEXT, pytest.mark.L2]

MAX_TOKENS = 256  # the built-in agents' (notes-agents.md § Runs)
SYSTEM = "You are a helpful assistant."  # the assistant's system message (notes)
ROOM = 120  # tokens the tests' small model leaves a request: context_window - max_tokens


def tokens(message: Mapping[str, Any]) -> int:
    """The contract's estimate of one message."""
    return math.ceil(len(str(message.get("content") or "").encode("utf-8")) / 4) + 4


def request_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    return sum(tokens(message) for message in messages)


def small_model(room: int = ROOM) -> str:
    """APEX_MODELS with gpt-4o-mini leaving `room` tokens for a request's messages."""
    entry = {"context_window": room + MAX_TOKENS, "input_micros_per_1k": 150,
             "output_micros_per_1k": 600}  # fmt: skip
    return json.dumps({"gpt-4o-mini": entry})


def chat_calls(fake_llm: FakeLlm) -> list[LlmRequest]:
    return [c for c in fake_llm.calls if c.path.endswith("/chat/completions")]


@pytest.fixture
async def runner(make_agent_user: MakeUser) -> AgentUser:
    return await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))


@pytest.fixture
async def small(agents_with: OpenAgents) -> httpx.AsyncClient:
    return await agents_with(APEX_MODELS=small_model())


def _largest_input(room: int) -> str:
    """The longest input (in UTF-8 bytes, of two-byte characters) that fits with the system
    message: ceil(bytes / 4) + 4 = room - tokens(system)."""
    left = room - tokens({"content": SYSTEM}) - 4
    return "é" * (left * 4 // 2)


async def test_an_input_just_fitting_runs_with_its_whole_request(
    small: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm
) -> None:
    text = _largest_input(ROOM)
    run = await final_run(small, runner, await submit(small, runner, input=text))
    assert run["status"] == "succeeded", run
    (call,) = chat_calls(fake_llm)
    assert call.messages == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": text},
    ]
    assert request_tokens(call.messages) == ROOM


async def test_an_input_one_byte_too_large_is_422_and_nothing_is_stored(
    small: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm, agents_db: Any
) -> None:
    # One more byte: one more estimated token, past the model's room.
    text = _largest_input(ROOM) + "a"
    response = await small.post("/v1/runs", json=run_body(input=text), headers=runner.headers)
    assert response.status_code == 422, response.text
    assert error_of(response) == "context_too_large"
    assert await agents_db.fetchval("SELECT count(*) FROM agent_runs") == 0
    assert chat_calls(fake_llm) == []


async def test_a_workflow_step_whose_own_input_is_too_large_is_422_naming_it(
    small: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm, agents_db: Any
) -> None:
    flow = {
        "steps": [
            {"id": "short", "agent": "assistant", "input": "fine"},
            {"id": "huge", "agent": "assistant", "input": "x" * 2000},
        ],
        "aggregate": "first",
    }
    body = run_body(agent=None, workflow=flow)
    response = await small.post("/v1/runs", json=body, headers=runner.headers)
    assert response.status_code == 422, response.text
    assert error_of(response) == "context_too_large"
    assert "huge" in response.json()["detail"]
    assert await agents_db.fetchval("SELECT count(*) FROM agent_runs") == 0
    assert chat_calls(fake_llm) == []


async def test_a_step_made_too_large_by_its_dependency_fails_without_a_call(
    small: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm
) -> None:
    fake_llm.reply("y" * 2000)  # step a's answer: far more than b's room
    flow = {
        "steps": [
            {"id": "a", "agent": "assistant", "input": "task a"},
            {"id": "b", "agent": "assistant", "input": "task b", "depends_on": ["a"]},
        ],
        "aggregate": "first",
    }
    run_id = await submit(small, runner, agent=None, workflow=flow)
    run = await final_run(small, runner, run_id)
    assert (run["status"], run["error"], run["failed_step"]) == ("failed", "step_failed", "b")
    steps = {s["id"]: s for s in run["steps"]}
    assert (steps["a"]["status"], steps["b"]["status"]) == ("succeeded", "failed")
    assert steps["b"]["error"] == "context_too_large"
    assert steps["b"]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}
    (call,) = chat_calls(fake_llm)  # a's only: b never reached the provider
    assert call.last_user_text == "task a"


async def test_a_reask_drops_the_oldest_messages_to_fit(
    agents_with: OpenAgents, runner: AgentUser, fake_llm: FakeLlm
) -> None:
    text = "x" * 380  # fits alone: 11 (system) + 99 = 110 of 120
    client = await agents_with(APEX_MODELS=small_model())
    fake_llm.reply("", "Paris.")  # empty: re-asked by the quality gate
    run = await final_run(client, runner, await submit(client, runner, input=text))
    assert (run["status"], run["result"]) == ("succeeded", "Paris."), run
    first, second = chat_calls(fake_llm)
    assert first.messages == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": text},
    ]
    # The whole conversation (system, input, the empty answer, the follow-up) does not fit:
    # the oldest droppable message, the input, went; the rest is sent in order.
    system, answer, follow_up = second.messages
    assert system == {"role": "system", "content": SYSTEM}
    assert answer["role"] == "assistant"
    assert not answer.get("content")
    assert follow_up["role"] == "user"
    assert "empty" in follow_up["content"]
    whole = [*first.messages, answer, follow_up]
    assert request_tokens(whole) > ROOM >= request_tokens(second.messages)


async def test_a_reask_that_fits_keeps_the_whole_conversation(
    agents_with: OpenAgents, runner: AgentUser, fake_llm: FakeLlm
) -> None:
    client = await agents_with(APEX_MODELS=small_model(1000))
    fake_llm.reply("", "Paris.")
    run = await final_run(client, runner, await submit(client, runner, input="x" * 380))
    assert run["status"] == "succeeded", run
    first, second = chat_calls(fake_llm)
    assert second.messages[:2] == first.messages
    assert [m["role"] for m in second.messages] == ["system", "user", "assistant", "user"]
