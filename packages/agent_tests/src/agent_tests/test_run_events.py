"""004#1 run events on the user's WebSocket: a run's events reach the connections of the
user who submitted it through the gateway, and nobody else's.

The rule under test (contract-agents.md § Routes: "Run events also reach the user's
WebSocket connections through the gateway (`type: "run.event"`)"; notes-agents.md § Run
events): each event of the run's audit trail, in the trail's order, reaches every
connection of the submitting user as `{"type": "run.event", "seq", "run_id", "tenant_id",
"event": {"seq", "kind", "step", "data", "at"}}` (`event` as `GET /v1/runs/{id}/audit`
lists it), `run.finished` with the run as `GET /v1/runs/{id}` answers it (its result and
usage); another user's connections (of the same tenant or another) never get it; a
connection opened later gets no earlier event, one that resumes from its `last_seq`
gets what it missed, also across a gateway restart (events are best effort, the run does
not wait for a gateway).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from ws_tests.client import Frame, WsClient

from agent_tests.client import (
    READ_RUNS,
    RUN_AGENTS,
    AgentUser,
    MakeUser,
    OpenSocket,
    final_run,
    run_events,
    submit,
)
from apex_testkit import FakeLlm, Platform, completion_tokens, prompt_tokens

COLD = pytest.mark.bvj(
    segment="early", goal="A new user sees the first agent response on its socket at once",
    mrr=10000, scenario="004#1",
)  # fmt: skip
pytestmark = [COLD, pytest.mark.L2, pytest.mark.L3]

ANSWER = "Paris is the capital of France."


async def audit_of(client: httpx.AsyncClient, user: AgentUser, run_id: str) -> list[Any]:
    response = await client.get(f"/v1/runs/{run_id}/audit", headers=user.headers)
    assert response.status_code == 200, response.text
    events: list[Any] = response.json()["events"]
    return events


def assert_events_of(frames: list[Frame], run_id: str, user: AgentUser) -> None:
    """Every frame is an event of `run_id` of the user's tenant, numbered 1.. in order,
    with the gateway's seqs strictly increasing."""
    assert [f["run_id"] for f in frames] == [run_id] * len(frames)
    assert {f["tenant_id"] for f in frames} == {user.tenant_id}
    assert [f["event"]["seq"] for f in frames] == list(range(1, len(frames) + 1))
    seqs = [f["seq"] for f in frames]
    assert seqs == sorted(set(seqs)), seqs


async def test_the_submitting_users_socket_gets_its_runs_events_in_order(
    agents_client: httpx.AsyncClient,
    make_agent_user: MakeUser,
    agent_socket: OpenSocket,
    fake_llm: FakeLlm,
) -> None:
    runner = await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))
    tabs = [await agent_socket(runner), await agent_socket(runner)]
    fake_llm.reply(ANSWER)
    run_id = await submit(agents_client, runner, cache=False)

    for tab in tabs:  # every tab of the user gets the same events
        frames = await run_events(tab)
        assert_events_of(frames, run_id, runner)
        assert [(f["event"]["kind"], f["event"]["step"]) for f in frames] == [
            ("run.submitted", None),
            ("step.started", "main"),
            ("llm.called", "main"),
            ("run.finished", None),
        ]
        # The first agent response, on the socket: the provider's answer and its usage.
        (call,) = fake_llm.calls
        finished = frames[-1]
        assert finished["event"]["data"] == {"status": "succeeded", "error": None}
        assert (finished["run"]["status"], finished["run"]["result"]) == ("succeeded", ANSWER)
        assert finished["run"]["usage"] == {
            "prompt_tokens": prompt_tokens(call.json["messages"]),
            "completion_tokens": completion_tokens(ANSWER),
        }
        assert frames[2]["event"]["data"]["tokens"] == {
            "prompt": prompt_tokens(call.json["messages"]),
            "completion": completion_tokens(ANSWER),
        }
    # The socket saw the run's trail as the audit route lists it, and the run as stored.
    trail = await audit_of(agents_client, runner, run_id)
    assert [f["event"] for f in frames] == trail
    assert finished["run"] == await final_run(agents_client, runner, run_id)


async def test_another_users_socket_never_gets_the_runs_events(
    agents_client: httpx.AsyncClient,
    make_agent_user: MakeUser,
    agent_socket: OpenSocket,
    fake_llm: FakeLlm,
) -> None:
    runner = await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))
    colleague = await make_agent_user(tenant=runner.tenant_id, permissions=(RUN_AGENTS,))
    stranger = await make_agent_user(permissions=(RUN_AGENTS,))
    sockets = {user.user_id: await agent_socket(user) for user in (runner, colleague, stranger)}
    fake_llm.reply(ANSWER)
    first = await submit(agents_client, runner, cache=False)
    assert_events_of(await run_events(sockets[runner.user_id]), first, runner)

    # The runner's run is over and its events were delivered: each user now runs one of
    # its own, and its socket's events up to that run's end are all of that run (the
    # gateway delivers a user's messages in the order they were logged): none of the
    # runner's first run, nor (for the runner, last) of the other two users' runs.
    for user in (colleague, stranger, runner):
        answer = f"An answer for {user.user_id}."
        fake_llm.reply(answer)
        own = await submit(agents_client, user, cache=False)
        frames = await run_events(sockets[user.user_id])
        assert_events_of(frames, own, user)
        assert frames[-1]["run"]["result"] == answer
        assert not [f for f in sockets[user.user_id].inbox if first in str(f)]


async def test_a_socket_opened_later_gets_no_earlier_event(
    agents_client: httpx.AsyncClient,
    make_agent_user: MakeUser,
    agent_socket: OpenSocket,
    fake_llm: FakeLlm,
) -> None:
    runner = await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))
    early: WsClient = await agent_socket(runner)
    fake_llm.reply(ANSWER)
    first = await submit(agents_client, runner, cache=False)
    assert_events_of(await run_events(early), first, runner)

    late = await agent_socket(runner)
    fake_llm.reply(ANSWER)
    second = await submit(agents_client, runner, cache=False, input="And of Italy?")
    frames = await run_events(late)
    assert_events_of(frames, second, runner)  # its first frame is the new run's event 1
    assert late.welcome["last_seq"] == frames[0]["seq"] - 1


async def test_a_socket_resuming_after_a_gateway_restart_gets_the_events_it_missed(
    clean_platform: Platform,
    agents_client: httpx.AsyncClient,
    make_agent_user: MakeUser,
    agent_socket: OpenSocket,
    fake_llm: FakeLlm,
) -> None:
    runner = await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))
    async with clean_platform.start("gateway") as gateway:
        seen = (await agent_socket(runner, base_url=gateway.url)).welcome["last_seq"]
    # That gateway is gone: the run completes all the same.
    fake_llm.reply(ANSWER)
    run_id = await submit(agents_client, runner, cache=False)
    run = await final_run(agents_client, runner, run_id)
    assert (run["status"], run["result"]) == ("succeeded", ANSWER)

    async with clean_platform.start("gateway") as restarted:
        socket = await agent_socket(runner, base_url=restarted.url, last_seq=seen)
        frames = await run_events(socket)
    assert_events_of(frames, run_id, runner)
    assert frames[0]["seq"] == seen + 1
    assert frames[-1]["run"] == run
