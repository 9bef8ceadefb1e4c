"""003 subscription tier enforcement in apex.agents: a tenant's runs against its plan's
`tokens_per_day` and `requests_per_minute` (contract-billing.md § Entitlements,
notes-billing.md § Tier enforcement), with APEX_PLAN_LIMITS=on, which these tests set.

- Tokens: the plan's `tokens_per_day` replaces APEX_TENANT_TOKEN_BUDGET; a submission when
  the tenant's runs finished today already used that many tokens is 402
  `plan_limit_exceeded` (`limit`, `allowed`, `plan`, `upgrade_to`).
- Rate: one more new run than `requests_per_minute` within the window
  (APEX_PLAN_RATE_WINDOW, 60 s; an hour here, so the burst fits it however slow the
  machine) is 429 `rate_limited` with `Retry-After`; a replayed idempotency key is
  answered with its run.
- The window slides: with a 1.5-second window and an operator's plan table (APEX_PLANS)
  whose early allows 2 runs a minute, the third run is refused with a `Retry-After` of
  the whole seconds left until the first leaves the window (1 or 2) and admitted once it
  left.
- Nothing of a refused submission is done: no run stored, no LLM request. An upgrade
  through apex.billing lifts the limit for the very next submission.

Expectations: the contract's plan table (free: 100,000 tokens a day, 60 requests a
minute; early above both) and the LLM fake's token rule (each `!` is one token).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from agent_tests.client import AUDIENCE as AGENTS
from agent_tests.client import READ_RUNS, RUN_AGENTS, chat_calls, final_run, run_body
from auth_tests.access import context_token

from apex_testkit import FakeLlm, Platform, eventually
from billing_tests.client import MANAGE, READ, BillingUser, MakeUser, subscribe, tenant_of

TIERS = pytest.mark.bvj(
    segment="platform", goal="Each tier gets what it pays for, and an upgrade unlocks more at once",
    mrr=40000, scenario="003:subscription tier enforcement",
)  # fmt: skip
pytestmark = [TIERS, pytest.mark.L2, pytest.mark.L3]

FREE_TOKENS_PER_DAY = 100_000
FREE_REQUESTS_PER_MINUTE = 60
RATE_WINDOW = 3600


@pytest.fixture
async def enforcing_agents(clean_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """A client of apex.agents enforcing plan limits (the rate window an hour long)."""
    async with clean_platform.client(
        "agents", APEX_PLAN_LIMITS="on", APEX_PLAN_RATE_WINDOW=str(RATE_WINDOW)
    ) as client:
        yield client


@dataclasses.dataclass(frozen=True)
class Owner:
    """The first user of a new tenant: context tokens for apex.billing and apex.agents."""

    billing: BillingUser
    agents: BillingUser


@pytest.fixture
async def owner(make_billing_user: MakeUser, billing_auth_client: httpx.AsyncClient) -> Owner:
    user = await make_billing_user(permissions=(READ, MANAGE, RUN_AGENTS, READ_RUNS))
    token = await context_token(billing_auth_client, user.tokens, AGENTS)
    return Owner(user, dataclasses.replace(user, token=token))


async def runs_of(db: Any, owner: Owner) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM agent_runs WHERE tenant_id = $1",
        uuid.UUID(tenant_of(owner.billing)),
    )
    return count


def refused(body: dict[str, Any]) -> tuple[Any, ...]:
    return body["error"], body["limit"], body["allowed"], body["plan"], body["upgrade_to"]


async def test_the_plans_tokens_per_day_refuse_a_run_until_an_upgrade(
    enforcing_agents: httpx.AsyncClient,
    billing_client: httpx.AsyncClient,
    owner: Owner,
    fake_llm: FakeLlm,
    billing_db: Any,
) -> None:
    user = owner.agents
    # Two runs of 50,000 `!` (a token each; a request body holds at most 64 KiB) use the
    # free plan's day: the second is admitted, as the first used less than the day.
    used = 0
    for _ in range(2):
        spend = run_body(input="!" * (FREE_TOKENS_PER_DAY // 2), cache=False)
        admitted = await enforcing_agents.post("/v1/runs", json=spend, headers=user.headers)
        assert admitted.status_code == 202, admitted.text
        run = await final_run(enforcing_agents, user, admitted.json()["run_id"])
        assert run["status"] == "succeeded", run
        used += run["usage"]["prompt_tokens"] + run["usage"]["completion_tokens"]
    assert used >= FREE_TOKENS_PER_DAY
    calls = len(chat_calls(fake_llm))

    body = run_body(cache=False)
    response = await enforcing_agents.post("/v1/runs", json=body, headers=user.headers)
    assert response.status_code == 402, response.text
    assert refused(response.json()) == (
        "plan_limit_exceeded",
        "tokens_per_day",
        FREE_TOKENS_PER_DAY,
        "free",
        "early",
    )
    # Nothing of it was done: no run stored, no LLM request.
    assert await runs_of(billing_db, owner) == 2
    assert len(chat_calls(fake_llm)) == calls

    upgraded = await subscribe(billing_client, owner.billing, "early")
    assert upgraded.status_code == 200, upgraded.text
    # The same request, at once: early allows 2,000,000 tokens a day.
    again = await enforcing_agents.post("/v1/runs", json=body, headers=user.headers)
    assert again.status_code == 202, again.text
    run = await final_run(enforcing_agents, user, again.json()["run_id"])
    assert run["status"] == "succeeded", run
    assert await runs_of(billing_db, owner) == 3
    assert len(chat_calls(fake_llm)) == calls + 1


async def test_the_plans_requests_per_minute_refuse_a_run_until_an_upgrade(
    enforcing_agents: httpx.AsyncClient,
    billing_client: httpx.AsyncClient,
    owner: Owner,
    fake_llm: FakeLlm,
    billing_db: Any,
) -> None:
    user = owner.agents
    # Runs scheduled for tomorrow: stored and counted, no LLM call while the test runs.
    tomorrow = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)).isoformat()
    bodies = [run_body(run_at=tomorrow) for _ in range(FREE_REQUESTS_PER_MINUTE + 1)]
    for body in bodies[:-1]:
        response = await enforcing_agents.post("/v1/runs", json=body, headers=user.headers)
        assert response.status_code == 202, response.text
    last_run = response.json()["run_id"]

    response = await enforcing_agents.post("/v1/runs", json=bodies[-1], headers=user.headers)
    assert response.status_code == 429, response.text
    assert refused(response.json()) == (
        "rate_limited",
        "requests_per_minute",
        FREE_REQUESTS_PER_MINUTE,
        "free",
        "early",
    )
    assert 1 <= int(response.headers["Retry-After"]) <= RATE_WINDOW
    assert await runs_of(billing_db, owner) == FREE_REQUESTS_PER_MINUTE
    # A replayed key is answered with its run, over the rate or not.
    replay = await enforcing_agents.post("/v1/runs", json=bodies[-2], headers=user.headers)
    assert (replay.status_code, replay.json()["run_id"]) == (200, last_run), replay.text
    assert await runs_of(billing_db, owner) == FREE_REQUESTS_PER_MINUTE
    assert chat_calls(fake_llm) == []

    upgraded = await subscribe(billing_client, owner.billing, "early")
    assert upgraded.status_code == 200, upgraded.text
    # The same request, at once: early allows 600 a minute.
    again = await enforcing_agents.post("/v1/runs", json=bodies[-1], headers=user.headers)
    assert again.status_code == 202, again.text
    assert await runs_of(billing_db, owner) == FREE_REQUESTS_PER_MINUTE + 1


# The window that slides in its test: the few local round trips from the first admitted
# run to the refused third fit in it with room to spare on a loaded machine (a 1 s window
# left CI's slowest requests too little). The Retry-After of the refusal, the seconds left
# of the first run's 1.5 rounded up, is 1 or 2.
SLIDING_WINDOW = 1.5
# An operator's plan table (APEX_PLANS): the contract's free and early, but early allows
# only 2 runs a minute.
FREE = {
    "requests_per_minute": FREE_REQUESTS_PER_MINUTE,
    "tokens_per_day": FREE_TOKENS_PER_DAY,
    "seats": 1,
    "ws_connections": 2,
}
SLOW_EARLY = {
    "free": {"price": 0, **FREE},
    "early": {
        "price": 2900,
        "requests_per_minute": 2,
        "tokens_per_day": 2_000_000,
        "seats": 5,
        "ws_connections": 20,
    },
}


async def test_the_rate_window_slides_and_retry_after_says_when(
    clean_platform: Platform, make_billing_user: MakeUser, billing_auth_client: httpx.AsyncClient,
    billing_db: Any,
) -> None:  # fmt: skip
    billing = clean_platform.client("billing", APEX_PLANS=json.dumps(SLOW_EARLY))
    agents = clean_platform.client(
        "agents", APEX_PLAN_LIMITS="on", APEX_PLAN_RATE_WINDOW=str(SLIDING_WINDOW)
    )
    async with billing as billing_client, agents as agents_client:
        user = await make_billing_user(permissions=(READ, MANAGE, RUN_AGENTS, READ_RUNS))
        upgraded = await subscribe(billing_client, user, "early")
        assert upgraded.status_code == 200, upgraded.text
        owner = Owner(user, dataclasses.replace(
            user, token=await context_token(billing_auth_client, user.tokens, AGENTS)
        ))  # fmt: skip
        tomorrow = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)).isoformat()
        bodies = [run_body(run_at=tomorrow) for _ in range(3)]
        for body in bodies[:2]:
            response = await agents_client.post("/v1/runs", json=body, headers=owner.agents.headers)
            assert response.status_code == 202, response.text
        refused = await agents_client.post("/v1/runs", json=bodies[2], headers=owner.agents.headers)
        assert refused.status_code == 429, refused.text
        body = refused.json()
        # The operator's table has no plan above early: nothing to upgrade to (the
        # contract's table would point to free, which allows 60).
        assert (body["error"], body["limit"], body["allowed"], body["plan"]) == (
            "rate_limited",
            "requests_per_minute",
            2,
            "early",
        )
        assert body["upgrade_to"] is None, body
        # Whole seconds until the first run leaves the window, rounded up: at least 1, at
        # most the window's length rounded up.
        assert 1 <= int(refused.headers["Retry-After"]) <= math.ceil(SLIDING_WINDOW)
        assert await runs_of(billing_db, owner) == 2

        async def admitted() -> bool:
            response = await agents_client.post(
                "/v1/runs", json=bodies[2], headers=owner.agents.headers
            )
            assert response.status_code in (202, 429), response.text
            return response.status_code == 202

        # Once the first run leaves the window, one more is admitted.
        await eventually(admitted, timeout=30, message="admitted once the window slid")
        assert await runs_of(billing_db, owner) == 3
