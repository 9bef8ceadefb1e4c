"""001#64 connection retry with backoff and 001#87 retry logic.

The rules under test (contract-data.md, Behaviours): across a PostgreSQL outage (the
fault proxy refusing or cutting its connections) a request keeps retrying with backoff
until APEX_DB_CONNECT_DEADLINE and succeeds once PostgreSQL is back, stored once;
past the deadline it is 503 `database_unavailable` with nothing written; connections
cut under the pool are replaced without the client seeing it. A fault scenario proves its
promise by counting: every acknowledged write is there, nothing is duplicated.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from apex_testkit import Platform, eventually
from db_tests.client import BILLING_READ, RUN_AGENTS, DataUser, MakeUser, error_of, usage_body
from db_tests.faults import ProxiedData, proxied_data
from db_tests.state import metrics, outbox_count, sample, usage_count

BACKOFF = pytest.mark.bvj(
    segment="enterprise", goal="A database restart loses no request that can wait for it",
    mrr=10000, scenario="001#64",
)  # fmt: skip
RETRY = pytest.mark.bvj(
    segment="platform", goal="Transient database faults never reach the client",
    mrr=6000, scenario="001#87",
)  # fmt: skip

FAST = {"APEX_DB_RETRY_BACKOFF": "0.02/0.2"}


@pytest.fixture
async def user(make_data_user: MakeUser) -> DataUser:
    return await make_data_user(permissions=(RUN_AGENTS, BILLING_READ))


async def _connection_retries(data: ProxiedData, admin_token: str) -> float:
    samples = await metrics(data.client, admin_token)
    return sample(samples, "apex_data_retries_total", reason="connection")


async def _retries_seen(data: ProxiedData, admin_token: str, before: float) -> None:
    """Wait until the instance retried its connection since `before` (its count then:
    the worker's process for these settings may have retried for earlier tests)."""

    async def retrying() -> bool:
        return await _connection_retries(data, admin_token) > before

    await eventually(retrying, timeout=10, message="the service to retry its connection")


@BACKOFF
@pytest.mark.L3
async def test_a_write_during_an_outage_succeeds_once_postgres_is_back(
    clean_platform: Platform, user: DataUser, data_db: Any, admin_token: str
) -> None:
    settings = {**FAST, "APEX_DB_CONNECT_DEADLINE": "30"}
    async with proxied_data(clean_platform, instance=1, **settings) as data:
        before = await _connection_retries(data, admin_token)
        data.proxy.down()
        body = usage_body(user.user_id)
        pending = asyncio.create_task(
            data.client.post("/v1/usage", json=body, headers=user.headers)
        )
        await _retries_seen(data, admin_token, before)
        assert not pending.done()
        data.proxy.up()
        response = await pending
        assert response.status_code == 201, response.text
    assert await usage_count(data_db, user.tenant_id) == 1
    assert await outbox_count(data_db, user.tenant_id) == 1


@BACKOFF
@pytest.mark.L3
async def test_a_read_during_an_outage_is_answered_once_postgres_is_back(
    clean_platform: Platform, user: DataUser, admin_token: str
) -> None:
    settings = {**FAST, "APEX_DB_CONNECT_DEADLINE": "30"}
    async with proxied_data(clean_platform, instance=1, **settings) as data:
        stored = await data.client.post(
            "/v1/usage", json=usage_body(user.user_id, quantity=9), headers=user.headers
        )
        assert stored.status_code == 201, stored.text
        before = await _connection_retries(data, admin_token)
        data.proxy.down()
        pending = asyncio.create_task(data.client.get("/v1/usage/summary", headers=user.headers))
        await _retries_seen(data, admin_token, before)
        data.proxy.up()
        response = await pending
        assert response.status_code == 200, response.text
        assert response.json()["by_kind"]["tokens"]["quantity"] == 9


@BACKOFF
@pytest.mark.L3
async def test_past_the_connect_deadline_a_write_is_503_and_writes_nothing(
    clean_platform: Platform, user: DataUser, data_db: Any
) -> None:
    settings = {**FAST, "APEX_DB_CONNECT_DEADLINE": "0.3"}
    async with proxied_data(clean_platform, instance=2, **settings) as data:
        data.proxy.down()
        body = usage_body(user.user_id)
        refused = await data.client.post("/v1/usage", json=body, headers=user.headers)
        assert refused.status_code == 503, refused.text
        assert error_of(refused) == "database_unavailable"
        data.proxy.up()
        assert await usage_count(data_db) == 0
        # The client's own retry, once PostgreSQL is back, stores it once.
        stored = await data.client.post("/v1/usage", json=body, headers=user.headers)
        assert stored.status_code == 201, stored.text
    assert await usage_count(data_db) == 1


@BACKOFF
@pytest.mark.L3
async def test_healthz_says_503_while_postgres_is_unreachable(
    clean_platform: Platform,
) -> None:
    async with proxied_data(
        clean_platform, instance=2, **FAST, APEX_DB_CONNECT_DEADLINE="0.3"
    ) as data:
        data.proxy.down()
        response = await data.client.get("/healthz")
        assert response.status_code == 503, response.text
        assert response.json()["checks"]["postgres"].startswith("down")
        data.proxy.up()

        async def healthy() -> bool:
            return (await data.client.get("/healthz")).status_code == 200

        await eventually(healthy, timeout=10, message="healthz back to 200")


@RETRY
@pytest.mark.L2
@pytest.mark.L3
async def test_connections_cut_under_the_pool_are_replaced_unseen(
    clean_platform: Platform, user: DataUser, data_db: Any, postgres_database: str
) -> None:
    async with proxied_data(clean_platform, instance=3, upstream=postgres_database, **FAST) as data:
        first = await data.client.post(
            "/v1/usage", json=usage_body(user.user_id), headers=user.headers
        )
        assert first.status_code == 201, first.text
        before = data.proxy.stats.connections
        data.proxy.reset_peers()
        second = await data.client.post(
            "/v1/usage", json=usage_body(user.user_id), headers=user.headers
        )
        assert second.status_code == 201, second.text
        summary = await data.client.get("/v1/usage/summary", headers=user.headers)
        assert summary.status_code == 200, summary.text
        assert summary.json()["by_kind"]["tokens"]["quantity"] == 200
        # New connections replaced the cut ones.
        assert data.proxy.stats.connections > before
    assert await usage_count(data_db, user.tenant_id) == 2
    assert await outbox_count(data_db, user.tenant_id) == 2


@RETRY
@pytest.mark.L2
@pytest.mark.L3
async def test_a_write_cut_mid_outage_is_retried_and_stored_once(
    clean_platform: Platform, user: DataUser, data_db: Any, postgres_database: str,
    admin_token: str,
) -> None:  # fmt: skip
    settings = {**FAST, "APEX_DB_CONNECT_DEADLINE": "30"}
    async with proxied_data(
        clean_platform, instance=1, upstream=postgres_database, **settings
    ) as data:
        before = await _connection_retries(data, admin_token)
        data.proxy.down()
        body = usage_body(user.user_id)
        pending = asyncio.create_task(
            data.client.post("/v1/usage", json=body, headers=user.headers)
        )
        await _retries_seen(data, admin_token, before)
        data.proxy.up()
        response = await pending
        assert response.status_code == 201, response.text
        again = await data.client.post("/v1/usage", json=body, headers=user.headers)
        assert again.status_code == 200, again.text
        assert again.json()["id"] == response.json()["id"]
    assert await usage_count(data_db, user.tenant_id) == 1
    assert await outbox_count(data_db, user.tenant_id) == 1
