"""002#7 circuit breaker on service failures, 001#86 circuit breaker cascade.

The rules under test (contract-agents.md § Behaviours, notes-agents.md § Failover and
breakers): each provider has a breaker in each apex.agents process. It opens after
APEX_BREAKER_FAILURES consecutive failed calls (a call fails once its retries are spent);
while it is open the provider gets no request at all and its calls go straight to the
next provider; APEX_BREAKER_RESET seconds after opening it is `half_open` and the next
call is one trial: an answer closes it, a failure opens it again. Every provider down:
runs fail `providers_unavailable` without a request to an open breaker's provider, and
cost nothing. `/healthz` shows `checks.providers` (closed, open, half_open) and is 503
only when every provider's breaker is open; `/metrics` has `apex_agents_breaker_state`
(0 closed, 1 open, 2 half-open) and `apex_agents_breaker_opened_total` per provider. One
provider's breaker never opens another's (001#86: the primary killed mid-run at L3).

Each test opens an instance with settings of its own (`agents_with`): breaker state is
per process, and no earlier test may have touched this one's.
"""

from __future__ import annotations

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
from agent_tests.providers import breakers, chat_requests, health, metric
from apex_testkit import FakeLlm, Platform, RedisNamespace, eventually

SERVICE_BREAKER = pytest.mark.bvj(
    segment="enterprise", goal="A failing provider is left alone instead of slowing every run",
    mrr=10000, scenario="002#7",
)  # fmt: skip
CASCADE = pytest.mark.bvj(
    segment="enterprise", goal="One provider's outage trips its own breaker and no other",
    mrr=10000, scenario="001#86",
)  # fmt: skip

# The part of the catalogue's combined 003 agents row these tests prove.
PIPELINE_BREAKING = pytest.mark.bvj(
    segment="enterprise", goal="The agent pipeline stops calling a provider that keeps failing",
    mrr=10000, scenario="003:pipeline circuit breaking",
)  # fmt: skip
pytestmark = [PIPELINE_BREAKING]

STATE = "apex_agents_breaker_state"
OPENED = "apex_agents_breaker_opened_total"
# Long enough that an open breaker stays open for the whole test.
LONG_RESET = "600"


@pytest.fixture
async def runner(make_agent_user: MakeUser) -> AgentUser:
    return await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))


async def _answered_by(client: httpx.AsyncClient, runner: AgentUser, provider: str) -> None:
    """One run, which succeeds with `provider` answering."""
    run = await final_run(client, runner, await submit(client, runner))
    assert (run["status"], run["provider_path"]) == ("succeeded", [provider]), run


@SERVICE_BREAKER
@pytest.mark.L2
@pytest.mark.L3
async def test_the_breaker_opens_after_the_failures_and_the_provider_gets_no_request(
    agents_with: OpenAgents,
    runner: AgentUser,
    fake_llm: FakeLlm,
    fake_llm_fallback: FakeLlm,
    admin_token: str,
) -> None:
    client = await agents_with(
        APEX_LLM_CACHE_TTL="0",  # every run asks the providers (no response cache)
        APEX_BREAKER_FAILURES="2",
        APEX_BREAKER_RESET=LONG_RESET,
        APEX_LLM_RETRIES="0",
    )
    fake_llm.fail_next(500, times=2)
    await _answered_by(client, runner, "llm_fallback")
    assert await breakers(client) == {"llm": "closed", "llm_fallback": "closed"}  # 1 of 2
    await _answered_by(client, runner, "llm_fallback")
    assert await breakers(client) == {"llm": "open", "llm_fallback": "closed"}
    assert len(chat_requests(fake_llm)) == 2

    # Open: the primary (which would answer now) is not asked; the fallback answers.
    for _ in range(3):
        await _answered_by(client, runner, "llm_fallback")
    assert len(chat_requests(fake_llm)) == 2
    assert len(chat_requests(fake_llm_fallback)) == 5

    status, body = await health(client)
    assert status == 200, body  # another provider may still be asked
    assert body["checks"]["providers"] == {"llm": "open", "llm_fallback": "closed"}
    assert await metric(client, admin_token, STATE, provider="llm") == 1
    assert await metric(client, admin_token, STATE, provider="llm_fallback") == 0
    assert await metric(client, admin_token, OPENED, provider="llm") == 1
    assert await metric(client, admin_token, OPENED, provider="llm_fallback") == 0


@SERVICE_BREAKER
@pytest.mark.L2
@pytest.mark.L3
async def test_a_success_between_failures_keeps_the_breaker_closed(
    agents_with: OpenAgents, runner: AgentUser, fake_llm: FakeLlm
) -> None:
    client = await agents_with(
        APEX_LLM_CACHE_TTL="0",  # every run asks the providers (no response cache)
        APEX_BREAKER_FAILURES="2",
        APEX_BREAKER_RESET="601",
        APEX_LLM_RETRIES="0",
    )
    fake_llm.fail_next(500)
    await _answered_by(client, runner, "llm_fallback")
    await _answered_by(client, runner, "llm")  # consecutive failures start again
    fake_llm.fail_next(500)
    await _answered_by(client, runner, "llm_fallback")
    assert await breakers(client) == {"llm": "closed", "llm_fallback": "closed"}
    await _answered_by(client, runner, "llm")
    assert [c.status for c in chat_requests(fake_llm)] == [500, 200, 500, 200]


@SERVICE_BREAKER
@pytest.mark.L2
@pytest.mark.L3
async def test_after_the_reset_one_trial_closes_the_breaker_or_opens_it_again(
    agents_with: OpenAgents, runner: AgentUser, fake_llm: FakeLlm, admin_token: str
) -> None:
    client = await agents_with(
        APEX_LLM_CACHE_TTL="0",  # every run asks the providers (no response cache)
        APEX_BREAKER_FAILURES="1",
        APEX_BREAKER_RESET="0.2",
        APEX_LLM_RETRIES="0",
    )
    fake_llm.fail_next(500, times=2)
    await _answered_by(client, runner, "llm_fallback")  # opens the primary's breaker
    assert await metric(client, admin_token, OPENED, provider="llm") == 1

    async def half_open() -> bool:
        return (await breakers(client))["llm"] == "half_open"

    await eventually(half_open, timeout=10, message="the primary's breaker half-open")
    assert await metric(client, admin_token, STATE, provider="llm") == 2
    # The trial fails (the second scripted 500): open again, the fallback answers.
    await _answered_by(client, runner, "llm_fallback")
    assert await metric(client, admin_token, OPENED, provider="llm") == 2
    assert len(chat_requests(fake_llm)) == 2  # one request per trial, no more

    await eventually(half_open, timeout=10, message="the primary's breaker half-open again")
    # The trial succeeds: closed, and the primary answers again.
    await _answered_by(client, runner, "llm")
    assert (await breakers(client))["llm"] == "closed"
    assert await metric(client, admin_token, STATE, provider="llm") == 0
    await _answered_by(client, runner, "llm")
    assert [c.status for c in chat_requests(fake_llm)] == [500, 500, 200, 200]


@SERVICE_BREAKER
@pytest.mark.L2
@pytest.mark.L3
async def test_every_provider_down_fails_runs_fast_and_bills_nothing(
    agents_with: OpenAgents,
    runner: AgentUser,
    fake_llm: FakeLlm,
    fake_llm_fallback: FakeLlm,
    admin_token: str,
) -> None:
    client = await agents_with(
        APEX_LLM_CACHE_TTL="0",  # every run asks the providers (no response cache)
        APEX_BREAKER_FAILURES="1",
        APEX_BREAKER_RESET=LONG_RESET,
        APEX_LLM_RETRIES="0",
    )
    fake_llm.fail_next(500)
    fake_llm_fallback.fail_next(503)
    first = await final_run(client, runner, await submit(client, runner))
    assert (first["status"], first["error"]) == ("failed", "providers_unavailable"), first
    status, body = await health(client)
    assert status == 503, body
    assert body["checks"]["providers"] == {"llm": "open", "llm_fallback": "open"}

    # Both breakers open: the next runs fail without a request to either provider.
    for _ in range(2):
        run = await final_run(client, runner, await submit(client, runner))
        assert (run["status"], run["error"]) == ("failed", "providers_unavailable"), run
        assert run["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}
        assert run["cost_micros"] == 0
    assert [c.status for c in chat_requests(fake_llm)] == [500]
    assert [c.status for c in chat_requests(fake_llm_fallback)] == [503]
    tokens = "apex_agents_tokens_total"
    assert await metric(client, admin_token, tokens, model="gpt-4o-mini", kind="prompt") == 0
    cost = "apex_agents_cost_micros_total"
    assert await metric(client, admin_token, cost, model="gpt-4o-mini") == 0


@CASCADE
@pytest.mark.L3
async def test_a_primary_gone_mid_run_opens_its_breaker_only(
    clean_platform: Platform,
    redis_namespace: RedisNamespace,
    runner: AgentUser,
    fake_llm: FakeLlm,
    fake_llm_fallback: FakeLlm,
    admin_token: str,
) -> None:
    settings = {
        # A queue of its own: no other agents process of this worker takes its jobs.
        "APEX_REDIS_PREFIX": f"{redis_namespace.prefix}cascade:",
        "APEX_BREAKER_FAILURES": "2",
        "APEX_BREAKER_RESET": "602",
        "APEX_LLM_RETRIES": "0",
        "APEX_LLM_CACHE_TTL": "0",  # every run asks the providers
    }
    async with clean_platform.proxied("agents", 7, "llm", **settings) as fault:
        client = fault.client
        fake_llm.hang_next()
        run_id = await submit(client, runner)
        await until(lambda: fake_llm.hanging == 1, message="the primary holding the run's call")
        fault.proxy.down()  # the primary is gone: its connection reset, new ones refused
        run = await final_run(client, runner, run_id)
        assert (run["status"], run["provider_path"]) == ("succeeded", ["llm_fallback"]), run

        await _answered_by(client, runner, "llm_fallback")  # refused: the second failure
        assert await breakers(client) == {"llm": "open", "llm_fallback": "closed"}
        connections = fault.proxy.stats.connections
        fault.proxy.up()  # the primary is back, but its breaker is open: not asked
        for _ in range(2):
            await _answered_by(client, runner, "llm_fallback")
        assert fault.proxy.stats.connections == connections
        assert len(chat_requests(fake_llm)) == 1  # only the call that hung
        status, body = await health(client)
        assert status == 200, body
        assert await metric(client, admin_token, OPENED, provider="llm") == 1
        assert await metric(client, admin_token, OPENED, provider="llm_fallback") == 0
        assert [c.status for c in chat_requests(fake_llm_fallback)] == [200, 200, 200, 200]
