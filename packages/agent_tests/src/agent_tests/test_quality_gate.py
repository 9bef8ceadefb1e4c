"""001#49 quality gate, and the 003 quality gate pipeline: an agent's answer becomes a
run's result only if it passes the gate; a failing answer is re-asked with the reasons,
then the run is rejected, never returned as a success, and billed for every attempt.

The rules under test (contract-agents.md § Behaviours "Quality gate", notes-agents.md §
Context, quality gate and response cache): an answer fails when it is empty, cut off at
max_tokens, a refusal (its first sentence says "I can't", "I cannot", "As an AI"...) or,
for an agent with an `output_schema` (the built-in `extractor`), not JSON valid against
it; it is re-asked up to APEX_QUALITY_RETRIES times (default 1) with a follow-up user
message naming the reasons, after the failing answer; when the last attempt fails too,
the run is `rejected` with `error` `quality_failed`, `result` null and the reasons in
`quality_reasons`. A run's usage is the sum of every attempt's reported usage, its cost
the sum of each call's rounded-up cost.
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
    submit,
)
from apex_testkit import FakeLlm, LlmRequest, completion_tokens, prompt_tokens

QUALITY = pytest.mark.bvj(
    segment="enterprise", goal="Only answers that pass the quality rules reach the customer",
    mrr=11000, scenario="001#49",
)  # fmt: skip
PIPELINE = pytest.mark.bvj(
    segment="enterprise", goal="The quality pipeline re-asks, rejects and bills every attempt",
    mrr=150000, scenario="003:quality gate pipeline",
)  # fmt: skip
pytestmark = [QUALITY, pytest.mark.L2, pytest.mark.L3]

GOOD = "Paris is the capital of France."
REFUSAL = "I cannot help with that request."


@pytest.fixture
async def runner(make_agent_user: MakeUser) -> AgentUser:
    return await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))


def chat_calls(fake_llm: FakeLlm) -> list[LlmRequest]:
    return [c for c in fake_llm.calls if c.path.endswith("/chat/completions")]


def billed(calls: list[LlmRequest], answers: list[str]) -> tuple[dict[str, int], int]:
    """The usage the fake reported over these calls, summed, and their cost under the
    default price (gpt-4o-mini 150 / 600), each call rounded up on its own."""
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    cost = 0
    for call, answer in zip(calls, answers, strict=True):
        prompt, completion = prompt_tokens(call.messages), completion_tokens(answer)
        usage["prompt_tokens"] += prompt
        usage["completion_tokens"] += completion
        cost += cost_micros(prompt, completion, 150, 600)
    return usage, cost


async def test_an_empty_answer_is_reasked_and_the_good_one_returned(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm
) -> None:
    fake_llm.reply("   ", GOOD)
    run = await final_run(agents_client, runner, await submit(agents_client, runner))
    assert (run["status"], run["result"], run["error"]) == ("succeeded", GOOD, None), run
    first, second = chat_calls(fake_llm)
    # The re-ask: the same conversation, the failing answer, and the reason.
    assert second.messages[:2] == first.messages
    assert second.messages[2] == {"role": "assistant", "content": "   "}
    follow_up = second.messages[3]
    assert follow_up["role"] == "user"
    assert "empty" in follow_up["content"]
    usage, cost = billed([first, second], ["   ", GOOD])
    assert (run["usage"], run["cost_micros"]) == (usage, cost)
    assert run["quality_reasons"] == []


@PIPELINE
async def test_an_answer_failing_every_attempt_is_rejected_and_billed(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm, agents_db: Any
) -> None:
    fake_llm.reply(REFUSAL, REFUSAL, GOOD)  # the third is never asked for (one re-ask)
    run_id = await submit(agents_client, runner)
    run = await final_run(agents_client, runner, run_id)
    assert (run["status"], run["error"], run["result"]) == ("rejected", "quality_failed", None)
    (reason,) = run["quality_reasons"]
    assert "refusal" in reason
    calls = chat_calls(fake_llm)
    assert len(calls) == 2
    assert "refusal" in calls[1].messages[-1]["content"]
    usage, cost = billed(calls, [REFUSAL, REFUSAL])
    assert (run["usage"], run["cost_micros"]) == (usage, cost)
    stored = await agents_db.fetchrow(
        "SELECT status, result, cost_micros FROM agent_runs WHERE id = $1::uuid", run_id
    )
    assert tuple(stored) == ("rejected", None, cost)


async def test_quality_retries_sets_the_number_of_reasks(
    agents_with: OpenAgents, runner: AgentUser, fake_llm: FakeLlm
) -> None:
    client = await agents_with(APEX_QUALITY_RETRIES="2")
    fake_llm.reply("", REFUSAL, GOOD)
    run = await final_run(client, runner, await submit(client, runner))
    assert (run["status"], run["result"]) == ("succeeded", GOOD), run
    calls = chat_calls(fake_llm)
    assert len(calls) == 3
    # The conversation grows by each failing answer and its follow-up.
    assert [m["role"] for m in calls[2].messages] == [
        "system", "user", "assistant", "user", "assistant", "user",
    ]  # fmt: skip
    assert run["usage"] == billed(calls, ["", REFUSAL, GOOD])[0]


async def test_no_reask_when_quality_retries_is_0(
    agents_with: OpenAgents, runner: AgentUser, fake_llm: FakeLlm
) -> None:
    client = await agents_with(APEX_QUALITY_RETRIES="0")
    fake_llm.reply("", GOOD)
    run = await final_run(client, runner, await submit(client, runner))
    assert (run["status"], run["error"], run["result"]) == ("rejected", "quality_failed", None)
    assert len(chat_calls(fake_llm)) == 1


async def test_an_answer_cut_at_max_tokens_is_reasked(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm
) -> None:
    fake_llm.reply("word " * 300, GOOD)  # 300 tokens: the fake stops at max_tokens (256)
    run = await final_run(agents_client, runner, await submit(agents_client, runner))
    assert (run["status"], run["result"]) == ("succeeded", GOOD), run
    _first, second = chat_calls(fake_llm)
    assert "max_tokens" in second.messages[-1]["content"]


@PIPELINE
async def test_an_answer_not_matching_the_output_schema_is_reasked(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm
) -> None:
    good = '{"city": "Lyon", "country": "France"}'
    fake_llm.reply("The city is Lyon.", '{"city": "Lyon"}', good)
    run_id = await submit(agents_client, runner, agent="extractor", input="I live in Lyon.")
    run = await final_run(agents_client, runner, run_id)
    assert (run["status"], run["error"], run["result"]) == ("rejected", "quality_failed", None)
    (reason,) = run["quality_reasons"]  # the last attempt's: a required property missing
    assert "country" in reason
    calls = chat_calls(fake_llm)
    assert len(calls) == 2
    assert "JSON" in calls[1].messages[-1]["content"]
    fake_llm.reply(good)
    again = await submit(agents_client, runner, agent="extractor", input="I live in Lyon.")
    run = await final_run(agents_client, runner, again)
    assert (run["status"], json.loads(run["result"])) == (
        "succeeded",
        {"city": "Lyon", "country": "France"},
    )


async def test_a_workflow_step_the_gate_rejects_fails_the_run_and_is_billed(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm
) -> None:
    fake_llm.reply("As an AI, I have no view.", "As an AI, I still have none.")
    flow = {"steps": [{"id": "only", "agent": "assistant", "input": "task"}],
            "aggregate": "first"}  # fmt: skip
    run_id = await submit(agents_client, runner, agent=None, workflow=flow)
    run = await final_run(agents_client, runner, run_id)
    assert (run["status"], run["error"], run["failed_step"], run["result"]) == (
        "failed", "step_failed", "only", None,
    )  # fmt: skip
    (step,) = run["steps"]
    assert (step["status"], step["error"]) == ("failed", "quality_failed")
    assert "refusal" in step["quality_reasons"][0]
    usage, cost = billed(
        chat_calls(fake_llm), ["As an AI, I have no view.", "As an AI, I still have none."]
    )
    assert (step["usage"], step["cost_micros"]) == (usage, cost)
    assert (run["usage"], run["cost_micros"]) == (usage, cost)
