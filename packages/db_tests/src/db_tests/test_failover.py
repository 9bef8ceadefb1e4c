"""001#56 database failover.

The rules under test (contract-data.md, Behaviours): with the primary given as a
multi-host DSN (`target_session_attrs=read-write`), when the primary dies and the replica
is promoted the service reconnects to the new primary; every write acknowledged (and
replicated) before the failover is there after it, nothing is duplicated, and the
service counts the failover (`apex_data_failovers_total`) and names the new server in
`/admin/pools`.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from apex_testkit import PostgresPair
from db_tests.cli import migrate
from db_tests.client import BILLING_READ, RUN_AGENTS, DataUser, MakeUser, OpenData, usage_body
from db_tests.state import metrics, pool_stats, sample

FAILOVER = pytest.mark.bvj(
    segment="enterprise", goal="Losing the primary database loses no acknowledged usage",
    mrr=20000, scenario="001#56",
)  # fmt: skip
pytestmark = [FAILOVER, pytest.mark.L3]


@pytest.fixture
async def user(make_data_user: MakeUser) -> DataUser:
    return await make_data_user(permissions=(RUN_AGENTS, BILLING_READ))


async def _count(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM usage_records), "
            "(SELECT count(DISTINCT idempotency_key) FROM usage_records)"
        )
    finally:
        await conn.close()
    return int(row[0]), int(row[1])


async def test_a_failover_keeps_every_acknowledged_write(
    data_with: OpenData, postgres_pair: PostgresPair, user: DataUser, admin_token: str
) -> None:
    await migrate(postgres_pair.primary_url)
    postgres_pair.replica.wait_caught_up(timeout=30)
    client = await data_with(
        APEX_DATABASE_URL=postgres_pair.multi_host_url,
        APEX_DB_CONNECT_DEADLINE="30",
        APEX_DB_RETRY_BACKOFF="0.05/0.5",
    )
    acknowledged: list[dict[str, Any]] = []
    lsn = ""
    for _ in range(20):
        response = await client.post(
            "/v1/usage", json=usage_body(user.user_id), headers=user.headers
        )
        assert response.status_code == 201, response.text
        acknowledged.append(response.json())
        lsn = response.headers["X-Apex-LSN"]
    before = (await pool_stats(client, admin_token))["pools"]["primary"]["server"]
    # Asynchronous replication: a write is safe from failover once the replica has it.
    postgres_pair.replica.wait_for_lsn(lsn, timeout=30)
    postgres_pair.kill_primary()
    postgres_pair.promote()
    after_failover = await client.post(
        "/v1/usage", json=usage_body(user.user_id), headers=user.headers
    )
    assert after_failover.status_code == 201, after_failover.text
    summary = await client.get("/v1/usage/summary", headers=user.headers)
    assert summary.status_code == 200, summary.text
    assert summary.json()["by_kind"]["tokens"]["quantity"] == 21 * 100
    # On the new primary itself: every acknowledged write, once.
    assert await _count(postgres_pair.replica.url) == (21, 21)
    after = (await pool_stats(client, admin_token))["pools"]["primary"]["server"]
    assert after != before
    assert sample(await metrics(client, admin_token), "apex_data_failovers_total") == 1
