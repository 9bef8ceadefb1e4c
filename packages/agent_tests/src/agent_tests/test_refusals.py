"""001#48 cost tracking, the refusal half: a request apex.agents refuses runs nothing and
bills nothing (no run row, no LLM call).

The rules under test (contract-agents.md, Who is asking): context tokens from apex.auth
with audience `apex-agents`; submitting needs `agents:run`, reading `agents:read`; the
tenant is the token's `tid`, and another tenant's run is 404 (read or cancel).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from auth_tests.access import context_token

from agent_tests.client import (
    READ_RUNS,
    RUN_AGENTS,
    AgentUser,
    MakeUser,
    bearer,
    error_of,
    final_run,
    run_body,
    submit,
)
from apex_testkit import FakeLlm

REFUSALS = pytest.mark.bvj(
    segment="enterprise", goal="Only a tenant's authorised users spend its money or see its runs",
    mrr=15000, scenario="001#48",
)  # fmt: skip
pytestmark = [REFUSALS, pytest.mark.L2, pytest.mark.L3]


async def _nothing_happened(agents_db: Any, fake_llm: FakeLlm) -> None:
    assert await agents_db.fetchval("SELECT count(*) FROM agent_runs") == 0
    assert fake_llm.calls == []


async def test_no_token_is_401_and_runs_nothing(
    agents_client: httpx.AsyncClient, fake_llm: FakeLlm, agents_db: Any
) -> None:
    response = await agents_client.post("/v1/runs", json=run_body())
    assert response.status_code == 401, response.text
    # RFC 6750 section 3.1: a request without credentials gets a challenge, no error code.
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer"), challenge
    assert "error=" not in challenge, challenge
    assert set(response.json()) == {"error", "detail"}  # the contract's error shape
    await _nothing_happened(agents_db, fake_llm)


async def test_a_token_for_another_audience_is_401_and_runs_nothing(
    agents_client: httpx.AsyncClient,
    agent_auth_client: httpx.AsyncClient,
    make_agent_user: MakeUser,
    fake_llm: FakeLlm,
    agents_db: Any,
) -> None:
    user = await make_agent_user(permissions=(RUN_AGENTS,))
    data_token = await context_token(agent_auth_client, user.tokens, "apex-data")
    response = await agents_client.post("/v1/runs", json=run_body(), headers=bearer(data_token))
    assert response.status_code == 401, response.text
    assert error_of(response) == "invalid_token"
    await _nothing_happened(agents_db, fake_llm)


async def test_without_agents_run_it_is_403_and_runs_nothing(
    agents_client: httpx.AsyncClient, make_agent_user: MakeUser, fake_llm: FakeLlm, agents_db: Any
) -> None:
    reader = await make_agent_user(permissions=(READ_RUNS,))
    response = await agents_client.post("/v1/runs", json=run_body(), headers=reader.headers)
    assert response.status_code == 403, response.text
    assert error_of(response) == "forbidden"
    await _nothing_happened(agents_db, fake_llm)


async def test_an_unknown_agent_is_422_and_runs_nothing(
    agents_client: httpx.AsyncClient, make_agent_user: MakeUser, fake_llm: FakeLlm, agents_db: Any
) -> None:
    user = await make_agent_user(permissions=(RUN_AGENTS,))
    response = await agents_client.post(
        "/v1/runs", json=run_body(agent="no-such-agent"), headers=user.headers
    )
    assert response.status_code == 422, response.text
    assert error_of(response) == "unknown_agent"
    await _nothing_happened(agents_db, fake_llm)


@pytest.mark.parametrize(
    "change",
    [{"idempotency_key": None}, {"input": ""}, {"priority": "urgent"}, {"extra": 1}],
    ids=["no-key", "empty-input", "bad-priority", "unknown-field"],
)
async def test_a_bad_body_is_422_and_runs_nothing(
    agents_client: httpx.AsyncClient,
    make_agent_user: MakeUser,
    fake_llm: FakeLlm,
    agents_db: Any,
    change: dict[str, Any],
) -> None:
    user = await make_agent_user(permissions=(RUN_AGENTS,))
    response = await agents_client.post("/v1/runs", json=run_body(**change), headers=user.headers)
    assert response.status_code == 422, response.text
    assert set(response.json()) == {"error", "detail"}  # the contract's error shape
    await _nothing_happened(agents_db, fake_llm)


@pytest.mark.L4
async def test_another_tenants_run_is_404_to_read_and_to_cancel(
    agents_client: httpx.AsyncClient, make_agent_user: MakeUser, fake_llm: FakeLlm
) -> None:
    owner: AgentUser = await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))
    other: AgentUser = await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))
    fake_llm.reply("mine")
    run_id = await submit(agents_client, owner, cache=False)
    await final_run(agents_client, owner, run_id)
    read = await agents_client.get(f"/v1/runs/{run_id}", headers=other.headers)
    assert read.status_code == 404, read.text
    cancel = await agents_client.post(f"/v1/runs/{run_id}/cancel", headers=other.headers)
    assert cancel.status_code == 404, cancel.text
    still = await final_run(agents_client, owner, run_id)
    assert (still["status"], still["result"]) == ("succeeded", "mine")
    malformed = await agents_client.get("/v1/runs/not-a-uuid", headers=owner.headers)
    assert malformed.status_code == 404, malformed.text
