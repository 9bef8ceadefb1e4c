"""001#45 audit trail: `GET /v1/runs/{id}/audit` answers a run's events in the order they
happened (contract: run.submitted, step.started, llm.called {provider, model, tokens,
cached}, ..., run.finished; notes-agents.md § State, audit, reload and shutdown: also
llm.failed, run.cancelled), stored in PostgreSQL, for the run's tenant only.
"""

from __future__ import annotations

import uuid
from typing import Any

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

AUDIT = pytest.mark.bvj(
    segment="enterprise", goal="Every run, call and decision can be traced after the fact",
    mrr=10000, scenario="001#45",
)  # fmt: skip
pytestmark = [AUDIT, pytest.mark.L2, pytest.mark.L3]


@pytest.fixture
async def runner(make_agent_user: MakeUser) -> AgentUser:
    return await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))


async def audit_of(client: httpx.AsyncClient, user: AgentUser, run_id: str) -> list[Any]:
    response = await client.get(f"/v1/runs/{run_id}/audit", headers=user.headers)
    assert response.status_code == 200, response.text
    assert response.json()["run_id"] == run_id
    events: list[Any] = response.json()["events"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    return events


def kinds(events: list[Any]) -> list[tuple[str, str | None]]:
    return [(e["kind"], e["step"]) for e in events]


async def test_a_runs_events_in_order_with_its_llm_call(
    agents_client: httpx.AsyncClient, runner: AgentUser, agents_db: Any
) -> None:
    run_id = await submit(agents_client, runner)
    run = await final_run(agents_client, runner, run_id)
    assert run["status"] == "succeeded"
    events = await audit_of(agents_client, runner, run_id)
    assert kinds(events) == [
        ("run.submitted", None),
        ("step.started", "main"),
        ("llm.called", "main"),
        ("run.finished", None),
    ]
    called = events[2]["data"]
    assert (called["provider"], called["model"], called["cached"]) == ("llm", "gpt-4o-mini", False)
    assert called["tokens"] == {
        "prompt": run["usage"]["prompt_tokens"],
        "completion": run["usage"]["completion_tokens"],
    }
    assert events[3]["data"] == {"status": "succeeded", "error": None}
    stored = await agents_db.fetch(
        "SELECT kind FROM agent_audit_events WHERE run_id = $1 ORDER BY id", uuid.UUID(run_id)
    )
    assert [row["kind"] for row in stored] == [kind for kind, _ in kinds(events)]


async def test_a_workflows_steps_each_start_and_call(
    agents_client: httpx.AsyncClient, runner: AgentUser
) -> None:
    chain = {
        "steps": [
            {"id": "a", "agent": "assistant"},
            {"id": "b", "agent": "assistant", "depends_on": ["a"]},
        ],
        "aggregate": "first",
    }
    run_id = await submit(agents_client, runner, agent=None, workflow=chain)
    assert (await final_run(agents_client, runner, run_id))["status"] == "succeeded"
    assert kinds(await audit_of(agents_client, runner, run_id)) == [
        ("run.submitted", None),
        ("step.started", "a"),
        ("llm.called", "a"),
        ("step.started", "b"),
        ("llm.called", "b"),
        ("run.finished", None),
    ]


async def test_a_failed_call_and_run_are_audited_with_the_reason(
    agents_with: OpenAgents, runner: AgentUser, fake_llm: FakeLlm, fake_llm_fallback: FakeLlm
) -> None:
    client = await agents_with(APEX_LLM_RETRIES="0")
    fake_llm.fail_next(500)
    fake_llm_fallback.fail_next(500)  # no provider answers
    run_id = await submit(client, runner)
    assert (await final_run(client, runner, run_id))["status"] == "failed"
    events = await audit_of(client, runner, run_id)
    assert kinds(events) == [
        ("run.submitted", None),
        ("step.started", "main"),
        ("llm.failed", "main"),
        ("run.finished", None),
    ]
    assert events[2]["data"]["error"] == "providers_unavailable"
    assert events[3]["data"] == {"status": "failed", "error": "providers_unavailable"}


async def test_a_cancel_is_audited_and_nothing_after_it(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm
) -> None:
    fake_llm.hang_next()
    run_id = await submit(agents_client, runner)
    await until(lambda: fake_llm.hanging == 1, message="the LLM call hangs")
    cancelled = await agents_client.post(f"/v1/runs/{run_id}/cancel", headers=runner.headers)
    assert cancelled.status_code == 200, cancelled.text
    await until(lambda: fake_llm.hanging == 0, message="the provider saw the close")
    assert kinds(await audit_of(agents_client, runner, run_id)) == [
        ("run.submitted", None),
        ("step.started", "main"),
        ("run.cancelled", None),
    ]
    # A second cancel of the final run adds nothing.
    again = await agents_client.post(f"/v1/runs/{run_id}/cancel", headers=runner.headers)
    assert again.status_code == 200, again.text
    assert len(await audit_of(agents_client, runner, run_id)) == 3


async def test_another_tenant_or_a_user_without_read_sees_no_audit(
    agents_client: httpx.AsyncClient, runner: AgentUser, make_agent_user: MakeUser
) -> None:
    run_id = await submit(agents_client, runner)
    await final_run(agents_client, runner, run_id)
    stranger = await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))
    foreign = await agents_client.get(f"/v1/runs/{run_id}/audit", headers=stranger.headers)
    assert foreign.status_code == 404, foreign.text
    writer = await make_agent_user(tenant=runner.tenant_id, permissions=(RUN_AGENTS,))
    unread = await agents_client.get(f"/v1/runs/{run_id}/audit", headers=writer.headers)
    assert unread.status_code == 403, unread.text
    unknown = await agents_client.get(f"/v1/runs/{uuid.uuid4()}/audit", headers=runner.headers)
    assert unknown.status_code == 404, unknown.text
    # Reading changed nothing: the run's trail is as it was.
    assert len(await audit_of(agents_client, runner, run_id)) == 4
