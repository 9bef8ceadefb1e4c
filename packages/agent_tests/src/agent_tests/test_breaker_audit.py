"""001#45 audit trail of a decision: the run whose failed call opens a provider's circuit
breaker has `breaker.opened` in its audit trail.

The rule under test (contract-agents.md § Routes: the audit event types include
`breaker.opened`; notes-agents.md § Failover and breakers, Audit): a call's failure that
opens a provider's breaker (the APEX_BREAKER_FAILURES-th consecutive one) records
`breaker.opened {provider}` in that run's trail, in the step whose call it was, before
the answer of the provider that took over (`llm.called`); a failure short of the
threshold, and a run that finds the breaker open already, record none.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from agent_tests.client import READ_RUNS, RUN_AGENTS, AgentUser, MakeUser, OpenAgents, final_run
from agent_tests.client import submit as submit_run
from agent_tests.providers import chat_requests
from apex_testkit import FakeLlm

pytestmark = [
    pytest.mark.bvj(
        segment="enterprise", goal="Every run, call and decision can be traced after the fact",
        mrr=10000, scenario="001#45",
    ),
    pytest.mark.L2,
    pytest.mark.L3,
]  # fmt: skip


async def trail(client: httpx.AsyncClient, user: AgentUser) -> list[tuple[str, str | None, Any]]:
    """One run, answered by the fallback provider: its audit events (kind, step, data)."""
    run_id = await submit_run(client, user)
    run = await final_run(client, user, run_id)
    assert (run["status"], run["provider_path"]) == ("succeeded", ["llm_fallback"]), run
    response = await client.get(f"/v1/runs/{run_id}/audit", headers=user.headers)
    assert response.status_code == 200, response.text
    return [(e["kind"], e["step"], e["data"]) for e in response.json()["events"]]


def kinds(events: list[tuple[str, str | None, Any]]) -> list[str]:
    return [kind for kind, _, _ in events]


async def test_the_run_whose_failure_opens_the_breaker_records_it(
    agents_with: OpenAgents,
    make_agent_user: MakeUser,
    fake_llm: FakeLlm,
    fake_llm_fallback: FakeLlm,
) -> None:
    user = await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))
    client = await agents_with(
        APEX_LLM_CACHE_TTL="0",  # every run asks the providers
        APEX_BREAKER_FAILURES="2",
        # Open for the whole test; a value no other test uses: at L3 an instance of the
        # same settings is another test's process, breakers included.
        APEX_BREAKER_RESET="610",
        APEX_LLM_RETRIES="0",
    )
    fake_llm.fail_next(500, times=2)
    answered = ["run.submitted", "step.started", "llm.called", "run.finished"]

    first = await trail(client, user)  # the primary's first failure: 1 of 2
    assert kinds(first) == answered

    second = await trail(client, user)  # the second failure opens it
    assert kinds(second) == [
        "run.submitted",
        "step.started",
        "breaker.opened",
        "llm.called",
        "run.finished",
    ]
    assert second[2][1:] == ("main", {"provider": "llm"})
    assert second[3][2]["provider"] == "llm_fallback"

    third = await trail(client, user)  # open: the primary is not asked, nothing opens
    assert kinds(third) == answered
    assert (len(chat_requests(fake_llm)), len(chat_requests(fake_llm_fallback))) == (2, 3)
