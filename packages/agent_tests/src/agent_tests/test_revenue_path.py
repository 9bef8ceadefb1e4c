"""003 "agent orchestration revenue path, end to end, billed": a user's request becomes a
run, the run an LLM answer, the answer's cost a usage record that billing reads back from
apex.data (L3; L4 against the local stack).

The rules under test (contract-agents.md § Who is asking, notes-agents.md § Costs and
degradation, contract-data.md): the run succeeds with the provider's answer; apex.data's
summary for the run's tenant (a context token of the same user, audience `apex-data`,
permission `billing:read`) has kind `llm` with the run's tokens as quantity and its
`cost_micros`; the run's tenant only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from auth_tests.access import bearer, context_token

from agent_tests.client import READ_RUNS, RUN_AGENTS, MakeUser, final_run, submit
from apex_testkit import FakeLlm, Platform, eventually

pytestmark = [
    pytest.mark.bvj(
        segment="enterprise", goal="What an agent run costs is what the tenant is billed",
        mrr=25000, scenario="003:agent orchestration revenue path",
    ),
    pytest.mark.L3,
    pytest.mark.L4,
]  # fmt: skip

BILLING_READ = "billing:read"


@pytest.fixture
async def data_client(clean_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    async with clean_platform.client("data") as client:
        yield client


async def test_a_run_is_answered_and_its_cost_is_billed_to_its_tenant(
    agents_client: httpx.AsyncClient,
    data_client: httpx.AsyncClient,
    agent_auth_client: httpx.AsyncClient,
    make_agent_user: MakeUser,
    fake_llm: FakeLlm,
) -> None:
    user = await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS, BILLING_READ))
    other = await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS, BILLING_READ))
    fake_llm.reply("The answer, billed.")
    run = await final_run(agents_client, user, await submit(agents_client, user, cache=False))
    assert (run["status"], run["result"]) == ("succeeded", "The answer, billed.")
    tokens = run["usage"]["prompt_tokens"] + run["usage"]["completion_tokens"]
    assert run["cost_micros"] > 0

    async def summary(of: Any) -> dict[str, Any]:
        token = await context_token(agent_auth_client, of.tokens, "apex-data")
        response = await data_client.get(
            "/v1/usage/summary", headers={**bearer(token), "Cache-Control": "no-cache"}
        )
        assert response.status_code == 200, response.text
        by_kind: dict[str, Any] = response.json()["by_kind"]
        return by_kind

    async def billed() -> dict[str, Any] | None:
        by_kind = await summary(user)
        return by_kind if "llm" in by_kind else None

    by_kind = await eventually(billed, timeout=60, message="the run's cost in apex.data")
    assert by_kind == {"llm": {"quantity": tokens, "cost_micros": run["cost_micros"]}}
    assert await summary(other) == {}
