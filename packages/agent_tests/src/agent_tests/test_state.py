"""001#34 agent state persistence and versioned restore: a run's state (status, step
records, result) is persisted as a new version at submit, after every change of a step
record and at its end (notes-agents.md § State, audit, reload and shutdown);
`GET /v1/runs/{id}/state[?version=n]` reads any version; `POST /v1/runs/{id}/restore
{version}` sets a finished run back to one: the steps that had succeeded in it are reused
(no second LLM call), the later ones run again. 004#4 (L3): a multi-agent workflow's
parallel steps in its state versions; 003 state recovery (L3): a failed workflow restored
from before its failing step finishes, its first step called once.
"""

from __future__ import annotations

import itertools
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
    error_of,
    final_run,
    submit,
    until,
)
from apex_testkit import FakeLlm, LlmRequest, eventually

STATE = pytest.mark.bvj(
    segment="enterprise", goal="A run's progress is kept step by step, resumable from any step",
    mrr=10000, scenario="001#34",
)  # fmt: skip
ORCHESTRATION = pytest.mark.bvj(
    segment="enterprise", goal="Multi-agent workflows keep a faithful record of every step's state",
    mrr=12000, scenario="004#4",
)  # fmt: skip
RECOVERY = pytest.mark.bvj(
    segment="enterprise", goal="A failed run recovers from its last good state, not from scratch",
    mrr=10000, scenario="003:state recovery",
)  # fmt: skip

# a -> b -> c: each step gets the output of the one before ("[output of step x]").
CHAIN: dict[str, Any] = {
    "steps": [
        {"id": "a", "agent": "assistant"},
        {"id": "b", "agent": "assistant", "depends_on": ["a"]},
        {"id": "c", "agent": "assistant", "depends_on": ["b"]},
    ],
    "aggregate": "first",
}


@pytest.fixture
async def runner(make_agent_user: MakeUser) -> AgentUser:
    return await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))


def calls_of(fake_llm: FakeLlm, step: str) -> int:
    """How many LLM requests step `step` of CHAIN made: a's input is the run's alone, b's
    carries a's output, c's b's (b's answer may echo a's marker: c is told apart first)."""

    def step_of(call: LlmRequest) -> str:
        text = call.last_user_text
        if "[output of step b]" in text:
            return "c"
        return "b" if "[output of step a]" in text else "a"

    return sum(1 for call in fake_llm.calls if step_of(call) == step)


async def state_of(
    client: httpx.AsyncClient, user: AgentUser, run_id: str, version: int | None = None
) -> dict[str, Any]:
    query = "" if version is None else f"?version={version}"
    response = await client.get(f"/v1/runs/{run_id}/state{query}", headers=user.headers)
    assert response.status_code == 200, response.text
    state: dict[str, Any] = response.json()
    return state


async def settled(client: httpx.AsyncClient, user: AgentUser, run_id: str) -> dict[str, Any]:
    """The run once final (`final_run`) and its final state version stored: the worker
    stores that version just after the run's end, which a read of the run may see first."""
    run = await final_run(client, user, run_id)

    async def stored() -> bool:
        return bool((await state_of(client, user, run_id))["status"] == run["status"])

    await eventually(stored, timeout=10, message=f"run {run_id}'s final state version")
    return run


async def history(client: httpx.AsyncClient, user: AgentUser, run_id: str) -> list[Any]:
    """(status, [step statuses]) of every version, 1..latest."""
    latest = (await state_of(client, user, run_id))["latest"]
    versions = [await state_of(client, user, run_id, v) for v in range(1, latest + 1)]
    assert [s["version"] for s in versions] == list(range(1, latest + 1))
    return [(s["status"], [step["status"] for step in s["steps"]]) for s in versions]


@STATE
@pytest.mark.L2
@pytest.mark.L3
async def test_every_step_change_is_a_new_state_version(
    agents_client: httpx.AsyncClient, runner: AgentUser, agents_db: Any
) -> None:
    run_id = await submit(agents_client, runner, agent=None, workflow=CHAIN)
    run = await settled(agents_client, runner, run_id)
    assert run["status"] == "succeeded"
    ok = "succeeded"
    assert await history(agents_client, runner, run_id) == [
        ("queued", []),
        ("running", ["running", "pending", "pending"]),
        ("running", [ok, "running", "pending"]),
        ("running", [ok, ok, "running"]),
        ("running", [ok, ok, ok]),
        (ok, [ok, ok, ok]),
    ]
    latest = await state_of(agents_client, runner, run_id)
    assert (latest["version"], latest["latest"]) == (6, 6)
    assert (latest["steps"], latest["result"], latest["error"]) == (
        run["steps"],
        run["result"],
        None,
    )
    stored = await agents_db.fetch(
        "SELECT version, status FROM agent_run_states WHERE run_id = $1 ORDER BY version",
        uuid.UUID(run_id),
    )
    assert [(r["version"], r["status"]) for r in stored][-1] == (6, "succeeded")
    assert len(stored) == 6


@STATE
@pytest.mark.L2
@pytest.mark.L3
async def test_a_single_agent_runs_state_holds_its_main_step(
    agents_client: httpx.AsyncClient, runner: AgentUser
) -> None:
    run_id = await submit(agents_client, runner)
    run = await settled(agents_client, runner, run_id)
    assert await history(agents_client, runner, run_id) == [
        ("queued", []),
        ("running", ["running"]),
        ("running", ["succeeded"]),
        ("succeeded", ["succeeded"]),
    ]
    (main,) = (await state_of(agents_client, runner, run_id))["steps"]
    assert (main["id"], main["result"], main["usage"]) == ("main", run["result"], run["usage"])


@STATE
@pytest.mark.L2
@pytest.mark.L3
async def test_restore_reuses_the_steps_that_succeeded_and_runs_the_rest_again(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm
) -> None:
    # Without the response cache, which would answer b and c's repeated requests.
    run_id = await submit(agents_client, runner, agent=None, workflow=CHAIN, cache=False)
    first = await settled(agents_client, runner, run_id)
    assert first["status"] == "succeeded"
    assert [calls_of(fake_llm, s) for s in "abc"] == [1, 1, 1]
    # Version 3: a succeeded, b running (the history test pins the versions).
    before = await state_of(agents_client, runner, run_id, 3)
    assert [s["status"] for s in before["steps"]] == ["succeeded", "running", "pending"]

    restored = await agents_client.post(
        f"/v1/runs/{run_id}/restore", json={"version": 3}, headers=runner.headers
    )
    assert restored.status_code == 202, restored.text
    assert restored.json() == {
        "run_id": run_id,
        "status": "queued",
        "restored_from": 3,
        "version": 7,
    }
    again = await settled(agents_client, runner, run_id)
    assert again["status"] == "succeeded"
    assert [calls_of(fake_llm, s) for s in "abc"] == [1, 2, 2]  # a reused, b and c again
    assert again["steps"][0] == first["steps"][0]  # a's record, answer and usage kept
    assert (again["result"], again["usage"], again["cost_micros"]) == (
        first["result"],
        first["usage"],
        first["cost_micros"],
    )
    seventh = await state_of(agents_client, runner, run_id, 7)
    assert seventh["status"] == "queued"
    assert [s["status"] for s in seventh["steps"]] == ["succeeded", "pending", "pending"]
    assert (await state_of(agents_client, runner, run_id))["status"] == "succeeded"


@STATE
@pytest.mark.L2
@pytest.mark.L3
async def test_refused_reads_and_restores_change_nothing(
    agents_client: httpx.AsyncClient,
    runner: AgentUser,
    make_agent_user: MakeUser,
    fake_llm: FakeLlm,
) -> None:
    held = Held("[output of step a]")
    fake_llm.respond_with(held)
    try:
        run_id = await submit(agents_client, runner, agent=None, workflow=CHAIN)
        await until(lambda: held.held == 1, message="step b's call is held")
        before = await state_of(agents_client, runner, run_id)
        assert before["status"] == "running"

        async def restore(version: Any, user: AgentUser = runner) -> httpx.Response:
            return await agents_client.post(
                f"/v1/runs/{run_id}/restore", json={"version": version}, headers=user.headers
            )

        running = await restore(1)
        assert running.status_code == 409, running.text
        assert error_of(running) == "run_active"
        unknown = await restore(99)
        assert unknown.status_code == 404, unknown.text
        for bad in (0, "1", None):
            invalid = await restore(bad)
            assert invalid.status_code == 422, invalid.text
        stranger = await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))
        foreign = await restore(1, stranger)
        assert foreign.status_code == 404, foreign.text
        for query in ("", "?version=1"):
            read = await agents_client.get(
                f"/v1/runs/{run_id}/state{query}", headers=stranger.headers
            )
            assert read.status_code == 404, read.text
        missing = await agents_client.get(
            f"/v1/runs/{run_id}/state?version=99", headers=runner.headers
        )
        assert missing.status_code == 404, missing.text
        zero = await agents_client.get(f"/v1/runs/{run_id}/state?version=0", headers=runner.headers)
        assert zero.status_code == 422, zero.text
        # Nothing changed: the same latest version, still running, b still held once.
        assert await state_of(agents_client, runner, run_id) == before
        assert held.held == 1
    finally:
        held.release()
    run = await settled(agents_client, runner, run_id)
    assert run["status"] == "succeeded"
    assert [calls_of(fake_llm, s) for s in "abc"] == [1, 1, 1]


@ORCHESTRATION
@pytest.mark.L3
async def test_parallel_steps_states_show_them_running_together(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm
) -> None:
    both = {
        "steps": [
            {"id": "left", "agent": "assistant", "input": "left side"},
            {"id": "right", "agent": "assistant", "input": "right side"},
            {"id": "join", "agent": "assistant", "depends_on": ["left", "right"]},
        ],
        "aggregate": "first",
    }
    held = Held("side", times=2)
    fake_llm.respond_with(held)
    try:
        run_id = await submit(agents_client, runner, agent=None, workflow=both)
        await until(lambda: held.held == 2, message="both parallel steps in flight")
        during = await state_of(agents_client, runner, run_id)
        assert [s["status"] for s in during["steps"]] == ["running", "running", "pending"]
    finally:
        held.release()
    run = await settled(agents_client, runner, run_id)
    assert run["status"] == "succeeded"
    versions = await history(agents_client, runner, run_id)
    assert versions[0] == ("queued", [])
    assert versions[1] == ("running", ["running", "running", "pending"])
    assert versions[-1] == ("succeeded", ["succeeded"] * 3)
    # A step never goes back (pending -> running -> succeeded), whatever order they end in.
    order = ["pending", "running", "succeeded"]
    for (_, earlier), (_, later) in itertools.pairwise(versions[1:]):
        assert all(order.index(a) <= order.index(b) for a, b in zip(earlier, later, strict=True))
    final = await state_of(agents_client, runner, run_id)
    assert (final["steps"], final["result"]) == (run["steps"], run["result"])
    assert len(fake_llm.calls) == 3


@RECOVERY
@pytest.mark.L3
async def test_a_failed_run_restored_before_its_failing_step_finishes(
    agents_with: OpenAgents, runner: AgentUser, fake_llm: FakeLlm, fake_llm_fallback: FakeLlm
) -> None:
    client = await agents_with(APEX_LLM_RETRIES="0")
    failures = {"left": 2}  # step b's first call, on each provider

    def answer(request: LlmRequest) -> str:
        text = request.last_user_text
        if "[output of step a]" in text and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("step b's provider fails once")  # the fake answers 500
        return "answer: " + text[:40]

    fake_llm.respond_with(answer)
    fake_llm_fallback.respond_with(answer)  # the fallback fails b's first call too
    run_id = await submit(client, runner, agent=None, workflow=CHAIN)
    failed = await settled(client, runner, run_id)
    assert (failed["status"], failed["error"], failed["failed_step"]) == (
        "failed",
        "step_failed",
        "b",
    )
    # Version 3 is a succeeded, b running (001#34's history).
    restored = await client.post(
        f"/v1/runs/{run_id}/restore", json={"version": 3}, headers=runner.headers
    )
    assert restored.status_code == 202, restored.text
    run = await settled(client, runner, run_id)
    assert run["status"] == "succeeded"
    assert [s["status"] for s in run["steps"]] == ["succeeded"] * 3
    assert [calls_of(fake_llm, s) for s in "abc"] == [1, 2, 1]
