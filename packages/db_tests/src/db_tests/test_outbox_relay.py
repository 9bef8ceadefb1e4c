"""001#51 PostgreSQL-ClickHouse transaction sync, 002#2 database transaction coordination:
the transactional outbox and its relay.

The rules under test (contract-data.md, Behaviours; notes-data.md, ClickHouse side):
exactly the committed records reach ClickHouse (a rolled-back transaction never does);
a relay killed between its ClickHouse insert and its outbox ack sends the rows again and
every query still counts each record once (ReplacingMergeTree read with FINAL); two
relays at once never send one row twice; a NOTIFY wakes the background relay; ClickHouse
cut mid-way leaves the rows pending, and they go once it is back.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from apex_testkit import Level, Platform, eventually, tls_context
from db_tests.state import metrics, sample
from db_tests.stores import ClickHouseReader, FlowInstance, blocked_by, ended, write_usage

SYNC = pytest.mark.bvj(
    segment="enterprise", goal="Analytics and billing see exactly the usage that was committed",
    mrr=10000, scenario="001#51",
)  # fmt: skip
COORDINATION = pytest.mark.bvj(
    segment="enterprise", goal="A crash or an outage between the stores duplicates nothing",
    mrr=150000, scenario="002#2",
)  # fmt: skip

RUN = "/admin/relay/run"


async def pending(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM outbox WHERE relayed_at IS NULL"))


async def write_records(conn: asyncpg.Connection, count: int) -> list[tuple[str, int, int]]:
    """`count` committed records of one new tenant: (id, quantity, cost_micros), sorted."""
    tenant, user = str(uuid.uuid4()), str(uuid.uuid4())
    written = []
    for n in range(1, count + 1):
        record = await write_usage(conn, tenant, user, quantity=n, cost_micros=10 * n)
        written.append((record, n, 10 * n))
    return sorted(written)


@SYNC
@pytest.mark.L2
@pytest.mark.L3
async def test_committed_records_reach_clickhouse_once(
    relay_client: httpx.AsyncClient,
    data_admin: dict[str, str],
    admin_token: str,
    flow_db: asyncpg.Connection,
    clickhouse: ClickHouseReader,
) -> None:
    written = await write_records(flow_db, 5)

    response = await relay_client.post(RUN, headers=data_admin)
    assert response.status_code == 200, response.text
    # One batch to ClickHouse, then one of cache invalidations (the tenant's summary).
    assert response.json() == {
        "relayed": 5, "invalidated": 1, "batches": 2, "pending": 0, "error": None
    }  # fmt: skip
    assert await clickhouse.events() == written

    again = await relay_client.post(RUN, headers=data_admin)
    assert again.status_code == 200, again.text
    assert again.json()["relayed"] == 0
    assert await clickhouse.events(final=False) == written
    assert await pending(flow_db) == 0
    # The lag metric and the relayed rows, as Prometheus sees them.
    samples = await metrics(relay_client, admin_token)
    assert sample(samples, "apex_data_relay_rows_total") == 5
    assert sample(samples, "apex_data_outbox_pending") == 0


@SYNC
@pytest.mark.L2
@pytest.mark.L3
async def test_rolled_back_write_never_reaches_clickhouse(
    relay_client: httpx.AsyncClient,
    data_admin: dict[str, str],
    flow_db: asyncpg.Connection,
    clickhouse: ClickHouseReader,
) -> None:
    tenant, user = str(uuid.uuid4()), str(uuid.uuid4())
    kept = await write_usage(flow_db, tenant, user, quantity=7)
    await write_usage(flow_db, tenant, user, quantity=9, commit=False)

    response = await relay_client.post(RUN, headers=data_admin)
    assert response.status_code == 200, response.text
    assert response.json()["relayed"] == 1
    assert await clickhouse.event_ids() == {kept}
    assert await flow_db.fetchval("SELECT count(*) FROM outbox") == 1
    assert await flow_db.fetchval("SELECT count(*) FROM usage_records") == 1


@SYNC
@pytest.mark.L2
async def test_two_relays_at_once_send_each_row_once(
    flow_instance: FlowInstance,
    data_admin: dict[str, str],
    flow_db: asyncpg.Connection,
    clickhouse: ClickHouseReader,
) -> None:
    written = await write_records(flow_db, 40)
    async with (
        flow_instance(APEX_OUTBOX_BATCH="3") as first,
        flow_instance(APEX_OUTBOX_BATCH="3") as second,
    ):
        answers = await asyncio.gather(
            first.post(RUN, headers=data_admin), second.post(RUN, headers=data_admin)
        )
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    # Rows locked by one relay are skipped by the other: together they sent each row once.
    assert sum(a.json()["relayed"] for a in answers) == 40
    assert await clickhouse.events() == written
    assert await pending(flow_db) == 0


@COORDINATION
@pytest.mark.L2
@pytest.mark.L3
async def test_relay_killed_between_insert_and_ack_counts_once(
    clean_platform: Platform,
    flow_database: str,
    flow_instance: FlowInstance,
    data_admin: dict[str, str],
    flow_db: asyncpg.Connection,
    clickhouse: ClickHouseReader,
) -> None:
    written = await write_records(flow_db, 6)
    ids = {record for record, _, _ in written}
    async with (
        clean_platform.start(
            "data", APEX_OUTBOX_RELAY="off", APEX_DATABASE_URL=flow_database
        ) as service,
        httpx.AsyncClient(base_url=service.url, timeout=30, verify=tls_context()) as client,
    ):
        async with flow_db.transaction():
            # SHARE lets the relay lock its rows (FOR UPDATE) but not update them: it
            # inserts into ClickHouse, then waits to ack.
            await flow_db.execute("LOCK TABLE outbox IN SHARE MODE")
            run = asyncio.create_task(client.post(RUN, headers=data_admin))
            waiting = await eventually(
                lambda: blocked_by(flow_db), timeout=30, message="relay at its ack"
            )
            assert await clickhouse.event_ids() == ids
            # The crash: between the ClickHouse insert and the outbox ack.
            if clean_platform.level is Level.L3:
                await service.kill()
            else:
                for pid in waiting:
                    await flow_db.fetchval("SELECT pg_terminate_backend($1)", pid)
                answer = await run
                assert answer.status_code == 503, answer.text
                assert answer.json()["error"] == "relay_failed"
        if clean_platform.level is Level.L3:
            with pytest.raises(httpx.TransportError):
                await run
        # The crashed relay's backends end once PostgreSQL sees their client gone.
        await eventually(
            lambda: ended(flow_db, waiting), timeout=30, message="the relay's backends ended"
        )
        assert await pending(flow_db) == 6

    async with flow_instance() as client:
        response = await client.post(RUN, headers=data_admin)
    assert response.status_code == 200, response.text
    # Sent again, as promised (at least once) ...
    assert response.json()["relayed"] == 6
    # ... and still counted once.
    assert await clickhouse.events() == written
    assert await pending(flow_db) == 0


@COORDINATION
@pytest.mark.L3
async def test_clickhouse_cut_mid_relay_leaves_rows_pending_then_sends_them_once(
    clean_platform: Platform,
    flow_database: str,
    data_admin: dict[str, str],
    flow_db: asyncpg.Connection,
    clickhouse: ClickHouseReader,
) -> None:
    settings: dict[str, Any] = {
        "APEX_OUTBOX_RELAY": "off", "APEX_OUTBOX_BATCH": "2", "APEX_DATABASE_URL": flow_database
    }  # fmt: skip
    process = clean_platform.instance("data", 20, via_proxy=("clickhouse",), **settings)
    proxy = clean_platform.proxy("data", 20, "clickhouse")
    first = await write_records(flow_db, 2)
    async with httpx.AsyncClient(base_url=process.url, timeout=30, verify=tls_context()) as client:
        warm = await client.post(RUN, headers=data_admin)
        assert warm.status_code == 200, warm.text
        written = sorted(first + await write_records(flow_db, 5))

        proxy.down()
        cut = await client.post(RUN, headers=data_admin)
        assert cut.status_code == 503, cut.text
        assert cut.json()["error"] == "relay_failed"
        assert await pending(flow_db) == 5

        proxy.up()
        back = await client.post(RUN, headers=data_admin)
    assert back.status_code == 200, back.text
    assert back.json()["relayed"] == 5
    assert await clickhouse.events() == written
    assert await pending(flow_db) == 0


@SYNC
@pytest.mark.L2
async def test_notify_wakes_the_background_relay(
    flow_instance: FlowInstance, flow_db: asyncpg.Connection, clickhouse: ClickHouseReader
) -> None:
    # An hour between polls: only the NOTIFY of the write can wake the relay in time.
    # The test's own database: the only relay listening on it is this instance's.
    async with flow_instance(APEX_OUTBOX_RELAY="on", APEX_OUTBOX_POLL="3600") as client:
        health = await client.get("/healthz")
        assert health.status_code == 200, health.text
        await eventually(
            lambda: flow_db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND query LIKE 'LISTEN %apex_outbox%'"
            ),
            timeout=30,
            message="the relay listening",
        )
        tenant, user = str(uuid.uuid4()), str(uuid.uuid4())
        record = await write_usage(flow_db, tenant, user, quantity=3, cost_micros=30, notify=True)

        async def acked() -> bool:
            return await pending(flow_db) == 0

        await eventually(acked, timeout=30, message="the record relayed and acked")
        # The relay acks only after its ClickHouse insert: the row is there, as written.
        assert await clickhouse.events() == [(record, 3, 30)]
