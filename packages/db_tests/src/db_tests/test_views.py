"""001#61 materialized view refresh: `usage_daily` and `POST /admin/views/refresh`.

The rules under test (contract-data.md, Routes and Schema): the refresh is CONCURRENTLY,
so reads of the view keep being answered (from the old contents) while it runs; after
it the view matches its base table (the route's own validation says 0 mismatched rows,
and the test recomputes the totals itself); a refresh applies only what changed since
the last one (incremental); an unknown view is 422 and the route needs the admin token.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import asyncpg
import httpx
import pytest

from apex_testkit import eventually
from db_tests.client import error_of
from db_tests.stores import blocked_by, write_usage

VIEWS = pytest.mark.bvj(
    segment="enterprise", goal="Daily usage reports stay fast and exact while they refresh",
    mrr=4000, scenario="001#61",
)  # fmt: skip
pytestmark = [VIEWS, pytest.mark.L2]

REFRESH = "/admin/views/refresh"
DAY_ONE = dt.datetime(2026, 3, 1, 9, tzinfo=dt.UTC)
DAY_TWO = dt.datetime(2026, 3, 2, 23, 59, tzinfo=dt.UTC)


async def daily(conn: asyncpg.Connection) -> list[tuple[str, dt.date, str, int, int]]:
    rows = await conn.fetch(
        "SELECT tenant_id::text, day, kind, quantity, cost_micros FROM usage_daily ORDER BY 1, 2, 3"
    )
    return [tuple(row) for row in rows]


async def physical_rows(conn: asyncpg.Connection, but: str) -> list[tuple[str, str]]:
    """(kind and day, physical location) of every row of other tenants than `but`."""
    rows = await conn.fetch(
        "SELECT kind || day::text, ctid::text FROM usage_daily WHERE tenant_id <> $1::uuid "
        "ORDER BY 1",
        but,
    )
    return [(row[0], row[1]) for row in rows]


async def seed(conn: asyncpg.Connection) -> tuple[str, str]:
    alice, bob, user = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    await write_usage(
        conn, alice, user, kind="tokens", quantity=10, cost_micros=1, occurred_at=DAY_ONE
    )
    await write_usage(
        conn, alice, user, kind="tokens", quantity=5, cost_micros=2, occurred_at=DAY_ONE
    )
    await write_usage(
        conn, alice, user, kind="images", quantity=1, cost_micros=7, occurred_at=DAY_TWO
    )
    await write_usage(
        conn, bob, user, kind="tokens", quantity=3, cost_micros=3, occurred_at=DAY_TWO
    )
    return alice, bob


async def test_refresh_matches_the_base_table_and_applies_only_changes(
    relay_client: httpx.AsyncClient, data_admin: dict[str, str], flow_db: asyncpg.Connection
) -> None:
    emptied = await relay_client.post(REFRESH, headers=data_admin)
    assert emptied.status_code == 200, emptied.text
    alice, bob = await seed(flow_db)
    # Not refreshed yet: the view still shows what it held.
    assert await daily(flow_db) == []

    refreshed = await relay_client.post(REFRESH, json={"view": "usage_daily"}, headers=data_admin)
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["rows"] == 3
    assert refreshed.json()["mismatched"] == 0
    expected = sorted([
        (alice, DAY_ONE.date(), "tokens", 15, 3),
        (alice, DAY_TWO.date(), "images", 1, 7),
        (bob, DAY_TWO.date(), "tokens", 3, 3),
    ])  # fmt: skip
    assert await daily(flow_db) == expected

    # One more record of Bob's: only his row changes in the next refresh.
    ctids = await physical_rows(flow_db, bob)
    user = str(uuid.uuid4())
    await write_usage(
        flow_db, bob, user, kind="tokens", quantity=4, cost_micros=1, occurred_at=DAY_TWO
    )
    again = await relay_client.post(REFRESH, headers=data_admin)
    assert again.status_code == 200, again.text
    assert again.json()["mismatched"] == 0
    assert await daily(flow_db) == [
        row if row[0] != bob else (bob, DAY_TWO.date(), "tokens", 7, 4) for row in expected
    ]
    # Alice's rows were not rewritten (same physical rows): an incremental update.
    assert await physical_rows(flow_db, bob) == ctids


async def test_reads_keep_working_during_a_refresh(
    relay_client: httpx.AsyncClient,
    data_admin: dict[str, str],
    flow_db: asyncpg.Connection,
    flow_database: str,
) -> None:
    emptied = await relay_client.post(REFRESH, headers=data_admin)
    assert emptied.status_code == 200, emptied.text
    alice, _ = await seed(flow_db)
    first = await relay_client.post(REFRESH, headers=data_admin)
    assert first.status_code == 200, first.text
    before = await daily(flow_db)
    await write_usage(flow_db, alice, str(uuid.uuid4()), quantity=100, occurred_at=DAY_ONE)

    reader = await asyncpg.connect(flow_database)
    # A read that would have to wait for the view's lock fails at once instead of hanging.
    await reader.execute("SET lock_timeout = '100ms'")
    async with flow_db.transaction():
        # The refresh takes the view's lock, then waits to read the base table.
        await flow_db.execute("LOCK TABLE usage_records IN ACCESS EXCLUSIVE MODE")
        refresh = asyncio.create_task(relay_client.post(REFRESH, headers=data_admin))
        await eventually(lambda: blocked_by(flow_db), timeout=30, message="refresh under way")
        assert (
            await flow_db.fetchval(
                "SELECT count(*) FROM pg_locks WHERE relation = 'usage_daily'::regclass "
                "AND mode = 'ExclusiveLock' AND granted"
            )
            == 1
        )
        # Meanwhile: reads are answered, from the contents before the refresh.
        assert await daily(reader) == before
        assert not refresh.done()
    answer = await refresh
    assert answer.status_code == 200, answer.text
    assert answer.json()["mismatched"] == 0
    after = await daily(reader)
    await reader.close()
    assert after != before
    assert sum(row[3] for row in after) == sum(row[3] for row in before) + 100


async def test_refresh_of_an_unknown_view_is_refused(
    relay_client: httpx.AsyncClient, data_admin: dict[str, str]
) -> None:
    response = await relay_client.post(REFRESH, json={"view": "users"}, headers=data_admin)
    assert response.status_code == 422, response.text
    assert error_of(response) == "unknown_view"


async def test_refresh_needs_the_admin_token(relay_client: httpx.AsyncClient) -> None:
    response = await relay_client.post(REFRESH, headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401, response.text
