"""002#11 background jobs, scheduling: a run submitted with `run_at` (RFC 3339, in the
future, at most 30 days ahead) stays `queued` and no worker takes it before then; it runs
once after. A bad `run_at` is 422 `invalid_run_at` with nothing stored or queued
(notes-agents.md § Job queue). Retries are in test_dead_letters.

"Nothing ran before run_at" is read from the fake provider's request log: the run's
one LLM request arrived after run_at.
"""

from __future__ import annotations

import datetime
import functools
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
)
from agent_tests.queues import queue_report
from apex_testkit import FakeLlm, eventually

SCHEDULING = pytest.mark.bvj(
    segment="enterprise", goal="Runs a customer schedules run when asked, not before",
    mrr=6000, scenario="002#11",
)  # fmt: skip
pytestmark = [SCHEDULING, pytest.mark.L3]


@pytest.fixture
async def client(agents_with: OpenAgents) -> httpx.AsyncClient:
    """apex.agents with one worker task, on a job queue of its own."""
    return await agents_with(APEX_AGENTS_WORKERS="1")


@pytest.fixture
async def runner(make_agent_user: MakeUser) -> AgentUser:
    return await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))


def _in(seconds: float) -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)


async def _schedule(client: httpx.AsyncClient, runner: AgentUser, run_at: str) -> str:
    response = await client.post("/v1/runs", json=run_body(run_at=run_at), headers=runner.headers)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    run_id: str = response.json()["run_id"]
    return run_id


async def _drained(client: httpx.AsyncClient, admin_token: str) -> bool:
    """Nothing scheduled, nothing queued, nothing taken and not yet acknowledged."""
    report = await queue_report(client, admin_token)
    queues = report["queues"].values()
    return report["scheduled"] == 0 and all(q == {"depth": 0, "pending": 0} for q in queues)


async def test_a_scheduled_run_waits_for_run_at_then_runs_once(
    client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm, admin_token: str
) -> None:
    run_at = _in(2)
    run_id = await _schedule(client, runner, run_at.isoformat())
    report = await queue_report(client, admin_token)
    assert report["scheduled"] == 1
    assert all(q["depth"] == 0 for q in report["queues"].values())
    status = await client.get(f"/v1/runs/{run_id}", headers=runner.headers)
    assert status.json()["status"] == "queued", status.text
    run = await final_run(client, runner, run_id)
    assert run["status"] == "succeeded"
    calls = fake_llm.calls
    assert len(calls) == 1
    assert calls[0].time >= run_at.timestamp()  # no worker took it before run_at
    # The worker acknowledges the job after it has stored the run's end: wait for the ack.
    await eventually(
        functools.partial(_drained, client, admin_token),
        timeout=30,
        message="the scheduled job acknowledged",
    )
    assert len(fake_llm.calls) == 1


async def test_a_scheduled_run_cancelled_before_run_at_never_runs(
    client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm, admin_token: str
) -> None:
    run_id = await _schedule(client, runner, _in(1).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    cancelled = await client.post(f"/v1/runs/{run_id}/cancel", headers=runner.headers)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"

    # Moved to its stream when due, taken, found final and acknowledged.
    await eventually(
        functools.partial(_drained, client, admin_token),
        timeout=30,
        message="the scheduled job taken and acknowledged",
    )
    run = await final_run(client, runner, run_id)
    assert run["status"] == "cancelled"
    assert fake_llm.calls == []


@pytest.mark.parametrize(
    "when",
    [
        pytest.param(lambda: _in(-60).isoformat(), id="in-the-past"),
        pytest.param(lambda: _in(31 * 86400).isoformat(), id="more-than-30-days-ahead"),
        pytest.param(lambda: _in(60).replace(tzinfo=None).isoformat(), id="no-offset"),
        pytest.param(lambda: "tomorrow", id="not-a-date"),
    ],
)
async def test_a_bad_run_at_is_422_and_stores_and_queues_nothing(
    client: httpx.AsyncClient,
    runner: AgentUser,
    fake_llm: FakeLlm,
    agents_db: Any,
    admin_token: str,
    when: Any,
) -> None:
    body = run_body(run_at=when())
    response = await client.post("/v1/runs", json=body, headers=runner.headers)
    assert response.status_code == 422, response.text
    assert error_of(response) == "invalid_run_at"
    assert await agents_db.fetchval("SELECT count(*) FROM agent_runs") == 0
    report = await queue_report(client, admin_token)
    assert report["scheduled"] == 0
    assert all(q["depth"] == 0 for q in report["queues"].values())
    assert fake_llm.calls == []
