"""001#62 database backup and restore: `apex.data.backup` with the real `pg_dump -Fc`
and `pg_restore` (processes), the restored database compared row for row; and the backup
of both stores, `python -m apex.data backup DIR` / `restore DIR`, with ClickHouse's own
`ALTER TABLE ... FREEZE` / `ATTACH PART` on the kit's server.

The rules under test (contract-data.md, Behaviours: Backup and restore): a dump of a
database with data in every area (records of several tenants under row-level security,
outbox, credits, transfers, the materialized view) restores into an empty database
equal row for row, table by table; the validation (`compare`) notices a difference; a
damaged archive is refused with the tool's error and leaves the target as it was. The
two-store backup: written, backed up, ClickHouse's tables dropped, restored, every row
of both stores equal to what was there; a missing or damaged file of the backup is named
and nothing of either store is restored.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from apex.data.backup import BackupError, compare, dump, restore, restore_backup
from apex.data.clickhouse import ClickHouse
from apex.data.outbox import CREDIT_TOPIC, RELAY_PAUSE_LOCK, Connect, Relay, enqueue
from apex_testkit import eventually
from db_tests.cli import data_cli
from db_tests.stores import write_usage

BACKUP = pytest.mark.bvj(
    segment="enterprise", goal="A lost database is restored with every record",
    mrr=8000, scenario="001#62",
)  # fmt: skip
pytestmark = [BACKUP, pytest.mark.L3]


@pytest.fixture
async def restore_target(flow_database: str) -> AsyncIterator[str]:
    """DSN of a second, empty database on the same server (dropped after the test):
    where the backup of `flow_database` (the test's own, which no relay touches) goes."""
    name = f"restore_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(flow_database)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    yield urlunsplit(urlsplit(flow_database)._replace(path=f"/{name}"))
    admin = await asyncpg.connect(flow_database)
    try:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


async def rows_of(dsn: str, table: str) -> list[tuple[object, ...]]:
    """Every row of `table`, in a canonical order (as the kit's superuser: all tenants)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(f"SELECT * FROM {table} t ORDER BY t::text")  # noqa: S608
    finally:
        await conn.close()
    return [tuple(row) for row in rows]


async def fill(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        user = str(uuid.uuid4())
        tenants = [str(uuid.uuid4()) for _ in range(3)]
        for number, tenant in enumerate(tenants, start=1):
            for quantity in range(number * 5):
                await write_usage(conn, tenant, user, quantity=quantity, cost_micros=number)
        await conn.executemany(
            "INSERT INTO tenant_credits (tenant_id, balance_micros) VALUES ($1::uuid, $2)",
            [(tenant, 1000 * n) for n, tenant in enumerate(tenants, start=1)],
        )
        await conn.execute(
            "INSERT INTO credit_transfers (id, from_tenant, to_tenant, amount_micros, "
            "idempotency_key, state) VALUES ($1, $2::uuid, $3::uuid, 5, 'k', 'committed')",
            uuid.uuid4(),
            tenants[0],
            tenants[1],
        )
        await conn.execute("REFRESH MATERIALIZED VIEW usage_daily")
    finally:
        await conn.close()


async def test_restore_is_equal_row_for_row(
    flow_database: str, restore_target: str, tmp_path: Path
) -> None:
    await fill(flow_database)
    archive = await dump(flow_database, tmp_path / "apex.dump")
    assert archive.read_bytes()[:5] == b"PGDMP"  # pg_dump's custom format

    await restore(archive, restore_target)

    tables = {c.table: c for c in await compare(flow_database, restore_target)}
    assert all(c.equal for c in tables.values()), [c for c in tables.values() if not c.equal]
    for table in ("usage_records", "outbox", "tenant_credits", "credit_transfers", "usage_daily"):
        source = await rows_of(flow_database, table)
        assert source, f"{table} has rows to compare"
        assert await rows_of(restore_target, table) == source
    assert tables["usage_records"].source_rows == 30
    # Row-level security came back too: without a tenant the service's role sees nothing.
    restored = await asyncpg.connect(restore_target)
    try:
        async with restored.transaction():
            await restored.execute("SET LOCAL ROLE apex_data")
            assert await restored.fetchval("SELECT count(*) FROM usage_records") == 0
    finally:
        await restored.close()


async def test_compare_notices_a_difference(
    flow_database: str, restore_target: str, tmp_path: Path
) -> None:
    await fill(flow_database)
    await restore(await dump(flow_database, tmp_path / "apex.dump"), restore_target)
    restored = await asyncpg.connect(restore_target)
    try:
        await restored.execute("UPDATE tenant_credits SET balance_micros = balance_micros + 1")
    finally:
        await restored.close()

    unequal = [c.table for c in await compare(flow_database, restore_target) if not c.equal]
    assert unequal == ["tenant_credits"]


async def test_a_damaged_archive_is_refused_and_changes_nothing(
    flow_database: str, restore_target: str, tmp_path: Path
) -> None:
    await fill(flow_database)
    archive = await dump(flow_database, tmp_path / "apex.dump")
    content = archive.read_bytes()
    damaged = tmp_path / "damaged.dump"
    damaged.write_bytes(content[: len(content) // 2])

    with pytest.raises(BackupError, match="pg_restore exited with status"):
        await restore(damaged, restore_target)
    # One transaction: the empty database is still empty.
    conn = await asyncpg.connect(restore_target)
    try:
        assert await conn.fetchval("SELECT to_regclass('usage_records')") is None
    finally:
        await conn.close()


# -- both stores: python -m apex.data backup / restore ------------------------------------

CLICKHOUSE_TABLES = ("credit_events", "usage_events")


@pytest.fixture
async def own_clickhouse(clickhouse_database: str) -> AsyncIterator[str]:
    """URL of a ClickHouse database of this test alone on the worker's server (dropped
    after): no other apex.data process relays into it, and dropping its tables harms none."""
    name = f"{urlsplit(clickhouse_database).path.lstrip('/')}_bk{uuid.uuid4().hex[:8]}"
    url = urlunsplit(urlsplit(clickhouse_database)._replace(path=f"/{name}"))
    async with ClickHouse.from_url(clickhouse_database) as admin:
        await admin.execute(f"CREATE DATABASE {name}")
    yield url
    async with ClickHouse.from_url(clickhouse_database) as admin:
        await admin.execute(f"DROP DATABASE IF EXISTS {name}")


def connector(dsn: str) -> Connect:
    """What a Relay borrows connections from: here, a new one each time."""

    @contextlib.asynccontextmanager
    async def connect() -> AsyncIterator[asyncpg.Connection]:
        conn = await asyncpg.connect(dsn)
        try:
            yield conn
        finally:
            await conn.close()

    return connect


async def fill_both(dsn: str, clickhouse_url: str) -> None:
    """`fill`, credit events in the outbox, everything relayed to ClickHouse, then two
    records more whose outbox rows stay pending (not in ClickHouse)."""
    await fill(dsn)
    connect = connector(dsn)

    async with connect() as conn:
        tenants = [str(row[0]) for row in await conn.fetch("SELECT tenant_id FROM tenant_credits")]
        async with conn.transaction():
            for amount in (5, 7, 11):
                payload = {
                    "id": uuid.uuid4(), "from_tenant": tenants[0], "to_tenant": tenants[1],
                    "amount_micros": amount, "created_at": dt.datetime.now(dt.UTC),
                }  # fmt: skip
                await enqueue(conn, CREDIT_TOPIC, payload)
    async with ClickHouse.from_url(clickhouse_url) as clickhouse:
        relayed = await Relay(connect, clickhouse).run_once()
    assert (relayed.error, relayed.relayed, relayed.pending) == (None, 33, 0)
    async with connect() as conn:
        for quantity in (1, 2):
            await write_usage(conn, tenants[2], str(uuid.uuid4()), quantity=quantity)
        # pg_restore refreshes the view from the records it restores: so must the source.
        await conn.execute("REFRESH MATERIALIZED VIEW usage_daily")


async def clickhouse_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the relay's tables, raw (no FINAL: what is stored), sorted; a table
    that does not exist has None."""
    found: dict[str, Any] = {}
    async with ClickHouse.from_url(url) as clickhouse:
        for table in CLICKHOUSE_TABLES:
            exists = await clickhouse.execute(
                "SELECT count() FROM system.tables WHERE database = currentDatabase() "
                "AND name = %(table)s",
                {"table": table},
            )
            sql = f"SELECT * FROM {table}"  # noqa: S608 - the relay's own table names
            found[table] = sorted(await clickhouse.execute(sql)) if exists[0][0] else None
    return found


async def clickhouse_versions(url: str) -> list[int]:
    """The `version` column of every ClickHouse row, by name: usage_events has columns
    after it (its labels)."""
    async with ClickHouse.from_url(url) as clickhouse:
        return [
            int(row[0])
            for table in CLICKHOUSE_TABLES
            for row in await clickhouse.execute(f"SELECT version FROM {table}")  # noqa: S608
        ]


async def drop_clickhouse_tables(url: str) -> None:
    async with ClickHouse.from_url(url) as clickhouse:
        for table in CLICKHOUSE_TABLES:
            await clickhouse.execute(f"DROP TABLE {table}")


async def test_both_stores_back_up_and_restore_row_for_row(
    flow_database: str, restore_target: str, own_clickhouse: str, tmp_path: Path
) -> None:
    await fill_both(flow_database, own_clickhouse)
    before = await clickhouse_rows(own_clickhouse)
    assert [len(before[t] or []) for t in CLICKHOUSE_TABLES] == [3, 30]
    folder = tmp_path / "backup"

    saved = await data_cli(flow_database, "backup", str(folder), APEX_CLICKHOUSE_URL=own_clickhouse)
    assert saved.code == 0, saved.output
    assert "credit_events: 3 rows, usage_events: 30 rows" in saved.output
    await drop_clickhouse_tables(own_clickhouse)  # ClickHouse's copy is gone
    loaded = await data_cli(
        restore_target, "restore", str(folder), APEX_CLICKHOUSE_URL=own_clickhouse
    )
    assert loaded.code == 0, loaded.output

    unequal = [c for c in await compare(flow_database, restore_target) if not c.equal]
    assert unequal == []
    assert await clickhouse_rows(own_clickhouse) == before
    # Consistent: what ClickHouse holds is exactly the outbox rows marked relayed.
    # (The version column of an event is the id of its outbox row.)
    conn = await asyncpg.connect(restore_target)
    try:
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE relayed_at IS NULL") == 2
        acknowledged = await conn.fetch("SELECT id FROM outbox WHERE relayed_at IS NOT NULL")
    finally:
        await conn.close()
    versions = await clickhouse_versions(own_clickhouse)
    assert sorted(versions) == sorted(int(row[0]) for row in acknowledged)


def damage(folder: Path, problem: str) -> str:
    """Break one file of the backup in `folder`; return what the error must say."""
    if problem == "missing":
        (folder / "postgres.dump").unlink()
        return "postgres.dump is missing"
    part = sorted((folder / "clickhouse" / "usage_events").glob("*/*.bin"))[0]
    content = bytearray(part.read_bytes())
    content[len(content) // 2] ^= 0xFF
    part.write_bytes(bytes(content))
    return f"{part.relative_to(folder).as_posix()} is damaged"


@pytest.mark.parametrize("problem", ["missing", "damaged"])
async def test_a_broken_backup_is_named_and_restores_nothing(
    flow_database: str, restore_target: str, own_clickhouse: str, tmp_path: Path, problem: str
) -> None:
    await fill_both(flow_database, own_clickhouse)
    folder = tmp_path / "backup"
    async with ClickHouse.from_url(own_clickhouse) as clickhouse:
        from apex.data.backup import create_backup  # noqa: PLC0415

        await create_backup(folder, flow_database, clickhouse)
    await drop_clickhouse_tables(own_clickhouse)
    expected = damage(folder, problem)

    async with ClickHouse.from_url(own_clickhouse) as clickhouse:
        with pytest.raises(BackupError, match="nothing restored") as caught:
            await restore_backup(folder, restore_target, clickhouse)
    assert expected in str(caught.value)
    assert await clickhouse_rows(own_clickhouse) == dict.fromkeys(CLICKHOUSE_TABLES)
    conn = await asyncpg.connect(restore_target)
    try:
        assert await conn.fetchval("SELECT to_regclass('usage_records')") is None
    finally:
        await conn.close()


async def test_the_relay_waits_while_a_backup_snapshots(
    flow_database: str, own_clickhouse: str
) -> None:
    conn = await asyncpg.connect(flow_database)
    backup = await asyncpg.connect(flow_database)
    try:
        await write_usage(conn, str(uuid.uuid4()), str(uuid.uuid4()))
        await backup.execute("SELECT pg_advisory_lock($1)", RELAY_PAUSE_LOCK)  # as create_backup
        async with ClickHouse.from_url(own_clickhouse) as clickhouse:
            batch = asyncio.create_task(Relay(connector(flow_database), clickhouse).relay_batch())

            async def relay_waits() -> bool:
                waiting = await conn.fetchval(
                    "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                    "WHERE l.locktype = 'advisory' AND NOT l.granted "
                    "AND d.datname = current_database()"
                )
                return bool(waiting)

            await eventually(relay_waits, timeout=10, message="the relay waiting on the lock")
            assert not batch.done()
            assert await clickhouse_rows(own_clickhouse) == {
                "credit_events": [],
                "usage_events": [],
            }
            await backup.execute("SELECT pg_advisory_unlock($1)", RELAY_PAUSE_LOCK)
            assert await asyncio.wait_for(batch, 30) == 1
    finally:
        await backup.close()
        await conn.close()
