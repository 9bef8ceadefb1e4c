"""001#88 error aggregation: a run's errors summarised per step, and counted by error.

The rules under test (notes-agents.md § Costs and degradation): `GET /v1/runs/{id}` has
`errors`, `[{step, error}]`: each failed step of a workflow in declared order, the one
step `main` of a failed single-agent run, `[]` for a run that succeeded; and
`apex_agents_step_errors_total{error}` in `/metrics` counts each agent call that ended
without an answer by its error code.
"""

from __future__ import annotations

from typing import Any

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
from agent_tests.usage import metric
from apex_testkit import FakeLlm

pytestmark = [
    pytest.mark.bvj(
        segment="enterprise", goal="Operators see which steps failed and why, at a glance",
        mrr=5000, scenario="001#88",
    ),
    pytest.mark.L2,
    pytest.mark.L3,
]  # fmt: skip

ERRORS = "apex_agents_step_errors_total"


@pytest.fixture
async def runner(make_agent_user: MakeUser) -> AgentUser:
    return await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))


async def test_failed_steps_are_listed_with_their_errors_and_counted_by_error(
    agents_with: OpenAgents,
    runner: AgentUser,
    fake_llm: FakeLlm,
    fake_llm_fallback: FakeLlm,
    admin_token: str,
) -> None:
    client = await agents_with(APEX_LLM_RETRIES="0", APEX_LLM_CACHE_TTL="0")

    def respond(request: Any) -> str:
        if request.last_user_text.startswith(("task b", "broken")):
            raise RuntimeError("this provider broke")  # the fake answers 500
        return "fine"

    # Both providers break alike: no failover answers for them.
    fake_llm.respond_with(respond)
    fake_llm_fallback.respond_with(respond)
    # At L3 the instance of these settings may have served earlier tests: count from here.
    before = {
        error: await metric(client, admin_token, ERRORS, error=error)
        for error in ("providers_unavailable", "provider_error")
    }
    flow = {
        "steps": [
            {"id": "a", "agent": "assistant", "input": "task a"},
            {"id": "b", "agent": "assistant", "input": "task b", "depends_on": ["a"]},
            {"id": "c", "agent": "assistant", "input": "task c", "depends_on": ["b"]},
        ],
        "aggregate": "first",
    }
    workflow = await final_run(
        client, runner, await submit(client, runner, agent=None, workflow=flow)
    )
    single = await final_run(client, runner, await submit(client, runner, input="broken"))
    fine = await final_run(client, runner, await submit(client, runner, input="fine"))

    assert (workflow["status"], single["status"], fine["status"]) == (
        "failed",
        "failed",
        "succeeded",
    )
    assert workflow["errors"] == [{"step": "b", "error": "providers_unavailable"}]
    assert single["errors"] == [{"step": "main", "error": "providers_unavailable"}]
    assert fine["errors"] == []
    # Two calls ended without an answer, both providers_unavailable; nothing else counted.
    after = {error: await metric(client, admin_token, ERRORS, error=error) for error in before}
    assert after == {
        "providers_unavailable": before["providers_unavailable"] + 2,
        "provider_error": before["provider_error"],
    }
