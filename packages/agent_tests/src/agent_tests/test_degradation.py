"""Degradation when apex.data fails: 001#89 graceful degradation, 001#91 timeout cascade
prevention, 001#92 error rate limiting, 001#93 recovery time objective, 004#7 error
cascade prevention and recovery (L3: apex.agents a process, apex.data behind a fault
proxy of the test's own).

The rules under test (contract-agents.md § Behaviours "Degradation", notes-agents.md §
Costs and degradation): with apex.data down or hanging, runs still complete (none waits
for it, none times out because of it); their cost records wait in the Redis stream
`<prefix>agents:costs` (`GET /admin/costs`: `waiting`) and reach apex.data once it is
back, each exactly once (counted in apex.data's PostgreSQL and in ClickHouse); every
failed request to apex.data counts in `apex_agents_dependency_errors_total{dependency=
"data"}` and in `GET /admin/dependencies`, and is logged at most once per
APEX_ERROR_LOG_INTERVAL (`logged`; the others `suppressed`); once apex.data answers
again, a backlog of N records is delivered within ceil(N / APEX_COST_BATCH) + 1
delivery cycles (`cycles` counts the cycles that sent records).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

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
)
from agent_tests.usage import ClickHouseCosts, admin_json, metric, usage_rows
from apex_testkit import FakeLlm, FaultProxy, Platform, eventually

DEGRADATION = pytest.mark.bvj(
    segment="enterprise", goal="Agent runs keep working while the data service is down",
    mrr=12000, scenario="001#89",
)  # fmt: skip
CASCADE = pytest.mark.bvj(
    segment="enterprise", goal="A hanging data service makes no agent run time out",
    mrr=10000, scenario="001#91",
)  # fmt: skip
RATE = pytest.mark.bvj(
    segment="mid", goal="A dead dependency is counted without flooding the logs",
    mrr=3000, scenario="001#92",
)  # fmt: skip
RTO = pytest.mark.bvj(
    segment="enterprise", goal="Billing catches up within a bounded time once data is back",
    mrr=8000, scenario="001#93",
)  # fmt: skip
RECOVERY = pytest.mark.bvj(
    segment="enterprise", goal="A failing dependency fails nothing else, and nothing is lost",
    mrr=12000, scenario="004#7",
)  # fmt: skip
pytestmark = [pytest.mark.L3]

RUNS = 5
BATCH = 2
# Short cycles; a long log interval: within a test, one warning per dependency.
SETTINGS = {
    "APEX_COST_BATCH": str(BATCH),
    "APEX_COST_INTERVAL": "0.2",
    "APEX_COST_TIMEOUT": "2",
    "APEX_ERROR_LOG_INTERVAL": "3600",
}


@pytest.fixture
async def runner(make_agent_user: MakeUser) -> AgentUser:
    return await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))


@pytest.fixture
def clickhouse(clickhouse_database: str) -> Iterator[ClickHouseCosts]:
    reader = ClickHouseCosts(clickhouse_database)
    yield reader
    reader.close()


@pytest.fixture
async def data_proxy(
    clean_platform: Platform, fault_proxy: Callable[[str], FaultProxy]
) -> tuple[FaultProxy, str]:
    """A fault proxy in front of the worker's apex.data, and apex.data's URL through it."""
    async with clean_platform.serve("data") as url:
        proxy = fault_proxy(url)
        return proxy, proxy.url_for(url)


async def _complete_runs(
    client: httpx.AsyncClient, user: AgentUser, fake_llm: FakeLlm, count: int
) -> list[dict[str, Any]]:
    """Submit `count` runs and wait for each to end; all succeeded (asserted)."""
    fake_llm.reply(*[f"answer {n}" for n in range(count)])
    ids = [await submit(client, user, input=f"question {n}") for n in range(count)]
    runs = [await final_run(client, user, run_id) for run_id in ids]
    assert [run["status"] for run in runs] == ["succeeded"] * count, runs
    return runs


async def _waiting(client: httpx.AsyncClient, admin_token: str, count: int) -> None:
    async def check() -> bool:
        status = await admin_json(client, admin_token, "/admin/costs")
        return bool(status["waiting"] == count)

    await eventually(check, timeout=30, message=f"{count} cost records waiting")


async def _billed_once(
    agents_db: Any, clickhouse: ClickHouseCosts, runs: list[dict[str, Any]]
) -> None:
    """Each run's call is one record in apex.data (never two), then one event in ClickHouse."""
    ids = [run["run_id"] for run in runs]

    async def stored() -> bool:
        rows = await usage_rows(agents_db, ids)
        assert len(rows) <= len(ids), rows  # a record billed twice
        return len(rows) == len(ids)

    await eventually(stored, timeout=60, message="every cost record in apex.data")
    rows = await usage_rows(agents_db, ids)
    assert [r.idempotency_key for r in rows] == sorted(f"{run_id}:main:1" for run_id in ids)
    assert {r.labels["run_id"]: r.cost_micros for r in rows} == {
        run["run_id"]: run["cost_micros"] for run in runs
    }

    async def copied() -> bool:
        return await clickhouse.records_of(ids) == len(ids)

    await eventually(copied, timeout=30, message="every cost record in ClickHouse")


@DEGRADATION
@RECOVERY
async def test_with_data_down_runs_complete_and_their_costs_arrive_once_when_it_is_back(
    agents_with: OpenAgents,
    data_proxy: tuple[FaultProxy, str],
    runner: AgentUser,
    fake_llm: FakeLlm,
    agents_db: Any,
    clickhouse: ClickHouseCosts,
    admin_token: str,
) -> None:
    proxy, data_url = data_proxy
    client = await agents_with(APEX_DATA_URL=data_url, **SETTINGS)
    proxy.down()
    runs = await _complete_runs(client, runner, fake_llm, RUNS)
    await _waiting(client, admin_token, RUNS)
    assert await usage_rows(agents_db, [run["run_id"] for run in runs]) == []

    # Connections cut mid-way too: a record whose answer was lost is sent again.
    proxy.up()
    proxy.reset_peers()
    await _billed_once(agents_db, clickhouse, runs)
    await _waiting(client, admin_token, 0)
    status = await admin_json(client, admin_token, "/admin/costs")
    assert status["dead"] == 0
    assert (await admin_json(client, admin_token, "/admin/dependencies"))["dependencies"]["data"][
        "state"
    ] == "ok"


@CASCADE
async def test_a_hanging_data_service_makes_no_run_time_out(
    agents_with: OpenAgents,
    data_proxy: tuple[FaultProxy, str],
    runner: AgentUser,
    fake_llm: FakeLlm,
    agents_db: Any,
    clickhouse: ClickHouseCosts,
    admin_token: str,
) -> None:
    proxy, data_url = data_proxy
    # A request to apex.data may hang longer than a whole run may take (the test waits out
    # the one under way when the proxy clears: a blackholed connection stays silent).
    client = await agents_with(
        APEX_DATA_URL=data_url, APEX_RUN_TIMEOUT="3", **{**SETTINGS, "APEX_COST_TIMEOUT": "4"}
    )
    proxy.blackhole()
    runs = await _complete_runs(client, runner, fake_llm, RUNS)
    await _waiting(client, admin_token, RUNS)
    assert proxy.stats.dropped > 0  # apex.data was asked, and never answered

    proxy.clear()
    await _billed_once(agents_db, clickhouse, runs)


@RATE
async def test_each_failure_of_data_is_counted_and_logged_at_most_once_per_interval(
    agents_with: OpenAgents,
    data_proxy: tuple[FaultProxy, str],
    runner: AgentUser,
    fake_llm: FakeLlm,
    admin_token: str,
) -> None:
    proxy, data_url = data_proxy
    client = await agents_with(APEX_DATA_URL=data_url, **SETTINGS)
    proxy.down()
    await _complete_runs(client, runner, fake_llm, 1)

    async def failing() -> dict[str, Any] | None:
        data = (await admin_json(client, admin_token, "/admin/dependencies"))["dependencies"]
        return data.get("data") if data.get("data", {}).get("errors", 0) >= 5 else None

    data = await eventually(failing, timeout=30, message="5 failed deliveries")
    assert data is not None  # eventually returns a truthy value
    assert data["state"] == "down"
    # Within APEX_ERROR_LOG_INTERVAL: one warning, every other failure suppressed.
    counted = await metric(
        client, admin_token, "apex_agents_dependency_errors_total", dependency="data"
    )
    later = (await admin_json(client, admin_token, "/admin/dependencies"))["dependencies"]["data"]
    assert data["errors"] <= counted <= later["errors"]
    assert (later["logged"], later["suppressed"]) == (1, later["errors"] - 1)


@RTO
async def test_a_backlog_drains_within_the_bound_number_of_delivery_cycles(
    agents_with: OpenAgents,
    data_proxy: tuple[FaultProxy, str],
    runner: AgentUser,
    fake_llm: FakeLlm,
    agents_db: Any,
    clickhouse: ClickHouseCosts,
    admin_token: str,
) -> None:
    proxy, data_url = data_proxy
    client = await agents_with(APEX_DATA_URL=data_url, **SETTINGS)
    proxy.down()
    runs = await _complete_runs(client, runner, fake_llm, RUNS)
    await _waiting(client, admin_token, RUNS)

    before = (await admin_json(client, admin_token, "/admin/costs"))["cycles"]
    started = time.monotonic()
    proxy.up()
    await _waiting(client, admin_token, 0)
    drained = time.monotonic() - started
    after = (await admin_json(client, admin_token, "/admin/costs"))["cycles"]
    # ceil(N / APEX_COST_BATCH) cycles, plus the one failing when apex.data came back.
    assert after - before <= math.ceil(RUNS / BATCH) + 1, (before, after)
    print(f"001#93: {RUNS} records drained in {after - before} cycles, {drained:.2f} s")
    await _billed_once(agents_db, clickhouse, runs)
