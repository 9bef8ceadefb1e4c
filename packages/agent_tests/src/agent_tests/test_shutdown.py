"""001#95 emergency shutdown, state preserved: SIGTERM to a worker process (L3), or
`POST /admin/shutdown {"mode": "emergency"}` (L2, L3), stops its workers taking jobs and
persists each run in flight as `interrupted` with its state; a new worker resumes it
from its last state version and finishes it, and no step that had succeeded is called
again (the provider fake's request log counts the calls).

Each test's instances share a Redis prefix of their own, so that no other apex.agents
instance of this pytest worker takes the job.
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
    Held,
    MakeUser,
    OpenAgents,
    admin_headers,
    error_of,
    final_run,
    submit,
    until,
)
from apex_testkit import FakeLlm, LlmRequest, Platform, RedisNamespace, tls_context

SHUTDOWN = pytest.mark.bvj(
    segment="enterprise", goal="An emergency stop loses no run and repeats no paid step",
    mrr=15000, scenario="001#95",
)  # fmt: skip
pytestmark = [SHUTDOWN]

# a -> b: b's input carries a's output ("[output of step a]").
CHAIN: dict[str, Any] = {
    "steps": [
        {"id": "a", "agent": "assistant"},
        {"id": "b", "agent": "assistant", "depends_on": ["a"]},
    ],
    "aggregate": "first",
}
B_MARKER = "[output of step a]"


@pytest.fixture
async def runner(make_agent_user: MakeUser) -> AgentUser:
    return await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))


@pytest.fixture
def queue(redis_namespace: RedisNamespace) -> dict[str, str]:
    """The settings of this test's job queue (a Redis prefix of its own)."""
    return {"APEX_REDIS_PREFIX": f"{redis_namespace.prefix}stop-{uuid.uuid4().hex[:8]}:"}


def step_calls(fake_llm: FakeLlm) -> tuple[int, int]:
    """(a's calls, b's calls) in the provider's request log."""

    def is_b(call: LlmRequest) -> bool:
        return B_MARKER in call.last_user_text

    calls = fake_llm.calls
    return len([c for c in calls if not is_b(c)]), len([c for c in calls if is_b(c)])


async def assert_interrupted(api: httpx.AsyncClient, user: AgentUser, run_id: str) -> None:
    """The run is interrupted, its last state version a succeeded and b as it was."""
    run = (await api.get(f"/v1/runs/{run_id}", headers=user.headers)).json()
    assert run["status"] == "interrupted", run
    state = (await api.get(f"/v1/runs/{run_id}/state", headers=user.headers)).json()
    assert state["status"] == "interrupted"
    assert [(s["id"], s["status"]) for s in state["steps"]] == [
        ("a", "succeeded"),
        ("b", "running"),
    ]


async def assert_resumed(
    client: httpx.AsyncClient, user: AgentUser, run_id: str, fake_llm: FakeLlm
) -> None:
    """The run finishes; a was called once in all, b twice (the interrupted call, the
    resumed one)."""
    run = await final_run(client, user, run_id)
    assert run["status"] == "succeeded"
    assert [s["status"] for s in run["steps"]] == ["succeeded", "succeeded"]
    assert step_calls(fake_llm) == (1, 2)
    audit = (await client.get(f"/v1/runs/{run_id}/audit", headers=user.headers)).json()
    kinds = [event["kind"] for event in audit["events"]]
    assert kinds.count("run.interrupted") == 1
    assert kinds[-1] == "run.finished"


@pytest.mark.L3
async def test_sigterm_interrupts_the_run_and_a_new_worker_resumes_it(
    clean_platform: Platform,
    agents_with: OpenAgents,
    runner: AgentUser,
    fake_llm: FakeLlm,
    queue: dict[str, str],
    agents_db: Any,
) -> None:
    workers = {**queue, "APEX_AGENTS_WORKERS": "1"}
    api = await agents_with(APEX_AGENTS_WORKERS="0", **queue)
    held = Held(B_MARKER)
    fake_llm.respond_with(held)
    try:
        async with clean_platform.start("agents", **workers) as doomed:
            run_id = await submit(api, runner, agent=None, workflow=CHAIN)
            await until(lambda: held.held == 1, message="step b's call is held")
            await doomed.stop()  # SIGTERM
        await assert_interrupted(api, runner, run_id)
        status = await agents_db.fetchval(
            "SELECT status FROM agent_runs WHERE id = $1", uuid.UUID(run_id)
        )
        assert status == "interrupted"
    finally:
        held.release()
    async with (
        clean_platform.start("agents", **workers) as restarted,
        httpx.AsyncClient(base_url=restarted.url, timeout=30, verify=tls_context()) as client,
    ):
        await assert_resumed(client, runner, run_id, fake_llm)


@pytest.mark.L2
@pytest.mark.L3
async def test_the_admin_routes_emergency_shutdown_interrupts_and_another_worker_resumes(
    clean_platform: Platform,
    agents_with: OpenAgents,
    runner: AgentUser,
    fake_llm: FakeLlm,
    queue: dict[str, str],
    admin_token: str,
) -> None:
    workers = {**queue, "APEX_AGENTS_WORKERS": "1"}
    api = await agents_with(APEX_AGENTS_WORKERS="0", **queue)
    held = Held(B_MARKER)
    fake_llm.respond_with(held)
    try:
        async with (
            clean_platform.start("agents", **workers) as doomed,
            httpx.AsyncClient(base_url=doomed.url, timeout=30, verify=tls_context()) as worker,
        ):
            run_id = await submit(api, runner, agent=None, workflow=CHAIN)
            await until(lambda: held.held == 1, message="step b's call is held")
            stopped = await worker.post(
                "/admin/shutdown", json={"mode": "emergency"}, headers=admin_headers(admin_token)
            )
            assert stopped.status_code == 200, stopped.text
            assert stopped.json() == {"mode": "emergency", "interrupted": [run_id]}
            await assert_interrupted(api, runner, run_id)
    finally:
        held.release()
    rescuer = await agents_with(APEX_AGENTS_WORKERS="1", APEX_JOB_CLAIM_IDLE="29", **queue)
    await assert_resumed(rescuer, runner, run_id, fake_llm)


@pytest.mark.L2
@pytest.mark.L3
async def test_a_refused_shutdown_stops_nothing(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm, admin_token: str
) -> None:
    held = Held("hold me")
    fake_llm.respond_with(held)
    try:
        run_id = await submit(agents_client, runner, input="hold me")
        await until(lambda: held.held == 1, message="the run's call is held")
        for body, headers, status in (
            ({"mode": "graceful"}, admin_headers(admin_token), 422),
            ({}, admin_headers(admin_token), 422),
            ({"mode": "emergency"}, runner.headers, 401),
        ):
            refused = await agents_client.post("/admin/shutdown", json=body, headers=headers)
            assert refused.status_code == status, refused.text
            assert error_of(refused)
        run = (await agents_client.get(f"/v1/runs/{run_id}", headers=runner.headers)).json()
        assert run["status"] == "running"
    finally:
        held.release()
    run = await final_run(agents_client, runner, run_id)
    assert run["status"] == "succeeded"
    # The workers still take jobs: a new run finishes.
    later = await final_run(agents_client, runner, await submit(agents_client, runner))
    assert later["status"] == "succeeded"
    assert len(fake_llm.calls) == 2
