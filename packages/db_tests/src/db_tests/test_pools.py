"""001#52 connection pool exhaustion and 001#84 resource pool sizing.

The rules under test (contract-data.md, Behaviours): a pool holds at most
APEX_DB_POOL_SIZE connections; a request that cannot get one within APEX_DB_POOL_TIMEOUT
is 503 `pool_exhausted` with `Retry-After`; the connections of failed or cancelled
requests go back to the pool (`GET /admin/pools` before and after), and the database
never sees more of the service's connections than the pool's size.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from apex_testkit import Platform, eventually
from db_tests.client import BILLING_READ, RUN_AGENTS, MakeUser, OpenData, error_of, usage_body
from db_tests.faults import proxied_data
from db_tests.state import Connect, pool_stats, usage_count

EXHAUSTION = pytest.mark.bvj(
    segment="enterprise", goal="A saturated database answers fast and clearly, and recovers",
    mrr=10000, scenario="001#52",
)  # fmt: skip
SIZING = pytest.mark.bvj(
    segment="platform", goal="The service never opens more connections than it is sized for",
    mrr=5000, scenario="001#84",
)  # fmt: skip

SMALL = {"APEX_DB_POOL_SIZE": "2", "APEX_DB_POOL_TIMEOUT": "0.2"}
# The blocked reads each hold a connection: without no-cache the second would wait on the
# first's recompute lock (stampede protection) instead of on the pool.
NO_CACHE = {"Cache-Control": "no-cache"}


async def _lock_usage(db_connect: Connect) -> Any:
    """A transaction holding every usage query of the service (ACCESS EXCLUSIVE)."""
    locker = await db_connect()
    transaction = locker.transaction()
    await transaction.start()
    await locker.execute("LOCK TABLE usage_records IN ACCESS EXCLUSIVE MODE")
    return transaction


async def _in_use_becomes(client: httpx.AsyncClient, admin_token: str, count: int) -> None:
    async def reached() -> bool:
        primary = (await pool_stats(client, admin_token))["pools"]["primary"]
        return bool(primary["in_use"] == count and primary["waiting"] == 0)

    await eventually(reached, timeout=10, message=f"{count} primary connections in use")


@EXHAUSTION
@pytest.mark.L2
@pytest.mark.L3
async def test_a_request_that_waits_past_the_pool_timeout_is_503_pool_exhausted(
    data_with: OpenData, make_data_user: MakeUser, db_connect: Connect, admin_token: str
) -> None:
    client = await data_with(**SMALL)
    reader = await make_data_user(permissions=(BILLING_READ,))
    lock = await _lock_usage(db_connect)
    blocked = [
        asyncio.create_task(client.get("/v1/usage/summary", headers={**reader.headers, **NO_CACHE}))
        for _ in range(2)
    ]
    await _in_use_becomes(client, admin_token, 2)
    refused = await client.get("/v1/usage/summary", headers=reader.headers)
    assert refused.status_code == 503, refused.text
    assert error_of(refused) == "pool_exhausted"
    assert refused.headers["Retry-After"] == "1"
    await lock.rollback()
    for response in await asyncio.gather(*blocked):
        assert response.status_code == 200, response.text
    await _in_use_becomes(client, admin_token, 0)
    assert (await client.get("/v1/usage/summary", headers=reader.headers)).status_code == 200


@EXHAUSTION
@pytest.mark.L2
@pytest.mark.L3
async def test_a_write_refused_for_pool_exhaustion_writes_nothing(
    data_with: OpenData, make_data_user: MakeUser, db_connect: Connect, data_db: Any,
    admin_token: str,
) -> None:  # fmt: skip
    client = await data_with(**SMALL)
    user = await make_data_user(permissions=(RUN_AGENTS, BILLING_READ))
    lock = await _lock_usage(db_connect)
    blocked = [
        asyncio.create_task(client.get("/v1/usage/summary", headers={**user.headers, **NO_CACHE}))
        for _ in range(2)
    ]
    await _in_use_becomes(client, admin_token, 2)
    refused = await client.post("/v1/usage", json=usage_body(user.user_id), headers=user.headers)
    assert refused.status_code == 503, refused.text
    assert error_of(refused) == "pool_exhausted"
    await lock.rollback()
    await asyncio.gather(*blocked)
    assert await usage_count(data_db) == 0


@EXHAUSTION
@pytest.mark.L2
@pytest.mark.L3
async def test_failed_and_cancelled_requests_give_their_connections_back(
    data_with: OpenData, make_data_user: MakeUser, db_connect: Connect, admin_token: str
) -> None:
    client = await data_with(**SMALL, APEX_DB_STATEMENT_TIMEOUT="0.5")
    reader = await make_data_user(permissions=(BILLING_READ,))
    before = (await pool_stats(client, admin_token))["pools"]["primary"]
    assert (before["size"], before["in_use"], before["waiting"]) == (2, 0, 0)
    lock = await _lock_usage(db_connect)
    abandoned = asyncio.create_task(client.get("/v1/usage/summary", headers=reader.headers))
    await _in_use_becomes(client, admin_token, 1)
    abandoned.cancel()
    timed_out = await client.get("/v1/usage/summary", headers=reader.headers)
    assert timed_out.status_code == 504, timed_out.text
    await lock.rollback()
    await _in_use_becomes(client, admin_token, 0)
    # Both connections serve again, at once.
    both = await asyncio.gather(
        *(client.get("/v1/usage/summary", headers=reader.headers) for _ in range(2))
    )
    assert [r.status_code for r in both] == [200, 200]


@SIZING
@pytest.mark.L3
async def test_the_database_never_sees_more_connections_than_the_pool_size(
    clean_platform: Platform, make_data_user: MakeUser, data_db: Any, admin_token: str
) -> None:
    user = await make_data_user(permissions=(RUN_AGENTS, BILLING_READ))
    # -- data-flow: the outbox relay has connections of its own (a pool of 2 and one that
    # LISTENs, notes-data.md); this test measures the requests' pool alone.
    settings = {"APEX_DB_POOL_SIZE": "3", "APEX_DB_POOL_TIMEOUT": "10", "APEX_OUTBOX_RELAY": "off"}
    async with proxied_data(clean_platform, instance=6, **settings) as data:
        data.proxy.reset_stats()
        responses = await asyncio.gather(
            *(
                data.client.post("/v1/usage", json=usage_body(user.user_id), headers=user.headers)
                for _ in range(30)
            )
        )
        assert [r.status_code for r in responses] == [201] * 30
        # Every connection the instance opened went through its proxy: counted there.
        assert 1 <= data.proxy.stats.active <= 3
        assert data.proxy.stats.connections <= 3
        primary = (await pool_stats(data.client, admin_token))["pools"]["primary"]
        assert (primary["size"], primary["in_use"], primary["waiting"]) == (3, 0, 0)
    assert await usage_count(data_db, user.tenant_id) == 30
