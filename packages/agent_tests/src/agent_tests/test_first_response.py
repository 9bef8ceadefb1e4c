"""004#1 cold start to the first agent response, as the user sees it: a new user of a new
tenant opens a WebSocket of the gateway, submits its first run, and gets the agent's
answer on that socket (L3; L4 against the deployment: the local stack runs the gateway,
apex.agents with its workers and the kit's LLM fake as the `llm` sandbox).

The rule under test (contract-agents.md § Routes: run events reach the user's WebSocket
through the gateway, `type: "run.event"`, so a client sees the first agent response on
its socket; notes-agents.md § Run events): the new user's socket, whose log is empty at
its welcome (`last_seq` 0), gets the run's events from the first of its seqs,
run.submitted .. run.finished, the last carrying the run with the provider's answer and
the provider's usage. The time it takes is a benchmark (`test_agent_bench`), never
asserted here.
"""

from __future__ import annotations

import httpx
import pytest

from agent_tests.client import (
    READ_RUNS,
    RUN_AGENTS,
    MakeUser,
    OpenSocket,
    chat_calls,
    final_run,
    run_events,
    submit,
)
from apex_testkit import FakeLlm, completion_tokens, prompt_tokens

pytestmark = [
    pytest.mark.bvj(
        segment="early", goal="A new user sees the first agent response on its socket at once",
        mrr=10000, scenario="004#1",
    ),
    pytest.mark.L3,
    pytest.mark.L4,
]  # fmt: skip

ANSWER = "Welcome: the first answer of your first run."


async def test_a_new_users_first_run_answers_on_its_socket(
    agents_client: httpx.AsyncClient,
    make_agent_user: MakeUser,
    agent_socket: OpenSocket,
    fake_llm: FakeLlm,
) -> None:
    user = await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))  # of a new tenant
    socket = await agent_socket(user)
    assert socket.welcome["last_seq"] == 0  # nothing was ever sent to this user
    fake_llm.reply(ANSWER)
    run_id = await submit(agents_client, user, cache=False)

    frames = await run_events(socket, timeout=60)
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    assert {(f["run_id"], f["tenant_id"]) for f in frames} == {(run_id, user.tenant_id)}
    kinds = [f["event"]["kind"] for f in frames]
    assert (kinds[0], kinds[-1]) == ("run.submitted", "run.finished")
    assert "llm.called" in kinds
    (call,) = chat_calls(fake_llm)
    first = frames[-1]["run"]
    assert (first["status"], first["result"], first["error"]) == ("succeeded", ANSWER, None)
    assert first["usage"] == {
        "prompt_tokens": prompt_tokens(call.json["messages"]),
        "completion_tokens": completion_tokens(ANSWER),
    }
    assert first == await final_run(agents_client, user, run_id)
