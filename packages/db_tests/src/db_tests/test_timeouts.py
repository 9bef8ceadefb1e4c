"""001#59 query timeout handling.

The rules under test (contract-data.md, Behaviours): every connection has PostgreSQL's
`statement_timeout` (APEX_DB_STATEMENT_TIMEOUT); a query past it is 504
`statement_timeout`, the backend's query is gone (`pg_stat_activity`), nothing of a timed
out write is stored, and the connection serves the next request.
"""

from __future__ import annotations

from typing import Any

import pytest

from db_tests.client import BILLING_READ, RUN_AGENTS, MakeUser, OpenData, error_of, usage_body
from db_tests.state import (
    Connect,
    active_queries,
    metrics,
    outbox_count,
    pool_stats,
    sample,
    usage_count,
    waiting_backends,
)

TIMEOUTS = pytest.mark.bvj(
    segment="enterprise", goal="A stuck query fails fast and clearly instead of hanging",
    mrr=8000, scenario="001#59",
)  # fmt: skip
pytestmark = [TIMEOUTS, pytest.mark.L2, pytest.mark.L3]

SHORT = {"APEX_DB_STATEMENT_TIMEOUT": "0.3"}


async def _lock_usage(db_connect: Connect) -> Any:
    locker = await db_connect()
    transaction = locker.transaction()
    await transaction.start()
    await locker.execute("LOCK TABLE usage_records IN ACCESS EXCLUSIVE MODE")
    return transaction


async def test_a_read_past_the_statement_timeout_is_504_and_its_query_is_gone(
    data_with: OpenData, make_data_user: MakeUser, db_connect: Connect, data_db: Any,
    admin_token: str,
) -> None:  # fmt: skip
    client = await data_with(**SHORT)
    reader = await make_data_user(permissions=(BILLING_READ,))
    counted = "apex_data_statement_timeouts_total"
    before = sample(await metrics(client, admin_token), counted)
    lock = await _lock_usage(db_connect)
    response = await client.get("/v1/usage/summary", headers=reader.headers)
    assert response.status_code == 504, response.text
    assert error_of(response) == "statement_timeout"
    # PostgreSQL cancelled it: no backend of the service still waits or runs.
    assert await waiting_backends(data_db) == 0
    assert await active_queries(data_db) == 0
    await lock.rollback()
    again = await client.get("/v1/usage/summary", headers=reader.headers)
    assert again.status_code == 200, again.text
    primary = (await pool_stats(client, admin_token))["pools"]["primary"]
    assert (primary["in_use"], primary["waiting"]) == (0, 0)
    # The worker's process for these settings is shared (L3): count from before.
    assert sample(await metrics(client, admin_token), counted) - before == 1


async def test_a_write_past_the_statement_timeout_is_504_and_writes_nothing(
    data_with: OpenData, make_data_user: MakeUser, db_connect: Connect, data_db: Any
) -> None:
    client = await data_with(**SHORT)
    writer = await make_data_user(permissions=(RUN_AGENTS,))
    lock = await _lock_usage(db_connect)
    body = usage_body(writer.user_id)
    response = await client.post("/v1/usage", json=body, headers=writer.headers)
    assert response.status_code == 504, response.text
    assert error_of(response) == "statement_timeout"
    await lock.rollback()
    assert await usage_count(data_db) == 0
    assert await outbox_count(data_db) == 0
    # The same request once the table is free: stored once.
    stored = await client.post("/v1/usage", json=body, headers=writer.headers)
    assert stored.status_code == 201, stored.text
    assert await usage_count(data_db) == 1


async def test_a_query_within_the_timeout_is_answered(
    data_with: OpenData, make_data_user: MakeUser
) -> None:
    client = await data_with(**SHORT)
    user = await make_data_user(permissions=(RUN_AGENTS, BILLING_READ))
    stored = await client.post("/v1/usage", json=usage_body(user.user_id), headers=user.headers)
    assert stored.status_code == 201, stored.text
    response = await client.get("/v1/usage/summary", headers=user.headers)
    assert response.status_code == 200, response.text
    assert response.json()["by_kind"]["tokens"]["quantity"] == 100
