"""001#37 timeout and cancellation: cancelling a run whose LLM call hangs really stops
the call (the provider sees the client go away: `fake_llm.hanging` drops to 0), the run
is `cancelled` and stays so, and nothing is retried or billed; a call past
APEX_RUN_TIMEOUT ends the run `timed_out` the same way. A workflow stopped either way
shows its step in flight `cancelled` and the steps after it `not_run`, never `running`.
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
    until,
)
from apex_testkit import FakeLlm

CANCEL = pytest.mark.bvj(
    segment="enterprise", goal="A cancelled or stuck run stops spending the customer's money",
    mrr=8000, scenario="001#37",
)  # fmt: skip
pytestmark = [CANCEL, pytest.mark.L2, pytest.mark.L3]


@pytest.fixture
async def runner(make_agent_user: MakeUser) -> AgentUser:
    return await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))


async def test_cancel_stops_the_hung_llm_call(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm
) -> None:
    fake_llm.hang_next()
    run_id = await submit(agents_client, runner)
    await until(lambda: fake_llm.hanging == 1, message="the LLM call hangs")
    cancelled = await agents_client.post(f"/v1/runs/{run_id}/cancel", headers=runner.headers)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    await until(lambda: fake_llm.hanging == 0, message="the provider saw the close")
    run = await final_run(agents_client, runner, run_id)
    assert (run["status"], run["error"], run["cost_micros"]) == ("cancelled", "cancelled", 0)
    assert len(fake_llm.calls) == 1  # not retried
    # Final is final: a second cancel changes nothing.
    again = await agents_client.post(f"/v1/runs/{run_id}/cancel", headers=runner.headers)
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "cancelled"


async def test_a_run_past_its_timeout_is_timed_out_and_its_call_stopped(
    agents_with: OpenAgents, runner: AgentUser, fake_llm: FakeLlm
) -> None:
    client = await agents_with(APEX_RUN_TIMEOUT="0.5")
    fake_llm.hang_next()
    run = await final_run(client, runner, await submit(client, runner))
    assert (run["status"], run["error"]) == ("timed_out", "run_timeout")
    await until(lambda: fake_llm.hanging == 0, message="the provider saw the close")
    assert len(fake_llm.calls) == 1


def two_step_workflow() -> dict[str, object]:
    """`first`, then `second` on its output: while `first` hangs, `second` waits."""
    return {
        "steps": [
            {"id": "first", "agent": "assistant", "input": "task first"},
            {"id": "second", "agent": "assistant", "input": "task second", "depends_on": ["first"]},
        ],
        "aggregate": "first",
    }


async def test_a_cancelled_workflow_shows_its_steps_stopped_not_running(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm
) -> None:
    fake_llm.hang_next()
    run_id = await submit(agents_client, runner, agent=None, workflow=two_step_workflow())
    await until(lambda: fake_llm.hanging == 1, message="the first step's call hangs")
    cancelled = await agents_client.post(f"/v1/runs/{run_id}/cancel", headers=runner.headers)
    assert cancelled.status_code == 200, cancelled.text
    await until(lambda: fake_llm.hanging == 0, message="the provider saw the close")
    run = await final_run(agents_client, runner, run_id)
    assert run["status"] == "cancelled"
    # The step in flight was stopped, the one waiting for it never started.
    assert [(s["id"], s["status"]) for s in run["steps"]] == [
        ("first", "cancelled"),
        ("second", "not_run"),
    ]
    assert len(fake_llm.calls) == 1


async def test_a_timed_out_workflow_shows_its_steps_stopped_not_running(
    agents_with: OpenAgents, runner: AgentUser, fake_llm: FakeLlm
) -> None:
    client = await agents_with(APEX_RUN_TIMEOUT="0.5")
    fake_llm.hang_next()
    run_id = await submit(client, runner, agent=None, workflow=two_step_workflow())
    run = await final_run(client, runner, run_id)
    assert (run["status"], run["error"]) == ("timed_out", "run_timeout")
    assert [(s["id"], s["status"]) for s in run["steps"]] == [
        ("first", "cancelled"),
        ("second", "not_run"),
    ]
    await until(lambda: fake_llm.hanging == 0, message="the provider saw the close")
    assert len(fake_llm.calls) == 1
