"""Benchmarks of batch inserts, 001#57 and 001#82 (marker perf; `nox -s bench`, or
`pytest --pyargs db_tests --perf -m perf -s -k batch`).

`apex.data.usage.insert_batch` (COPY into a temporary table, then one `INSERT ... ON
CONFLICT DO NOTHING` with the outbox rows) against `executemany` of the same insert, row
by row, in one transaction each; batch sizes 100, 1,000 and 10,000; COPY on one and on two
connections at once; and the whole request path (`POST /v1/usage/batch`, JSON and
validation included). Numbers go to $APEX_BENCH_DIR/db.json (`apex_testkit.bench_report`)
and a table on stdout. Only correctness can fail a benchmark (every row stored once,
with its outbox row), never its speed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import asyncpg
import pytest

from apex.data.tenancy import tenant_transaction
from apex.data.usage import NewRecord, insert_batch
from apex_testkit import Level, bench_report
from db_tests.client import RUN_AGENTS, MakeUser, usage_body
from db_tests.stores import FlowInstance

BATCH = pytest.mark.bvj(
    segment="enterprise", goal="Bulk usage is stored at COPY speed",
    mrr=4000, scenario="001#57",
)  # fmt: skip
PROCESSING = pytest.mark.bvj(
    segment="enterprise", goal="Bulk operations scale with batch size and connections",
    mrr=7000, scenario="001#82",
)  # fmt: skip
pytestmark = [pytest.mark.perf, pytest.mark.L2, pytest.mark.L3]

# Rows per measurement: each batch size stores this many, in ROWS / size batches.
ROWS: Final = 20_000
SIZES: Final = (100, 1_000, 10_000)
# What insert_batch does per row, as one statement per row (executemany).
_ROW_BY_ROW: Final = """
WITH ins AS (
    INSERT INTO usage_records
        (id, tenant_id, user_id, kind, quantity, cost_micros, idempotency_key, occurred_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, now())
    ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
    RETURNING *
)
INSERT INTO outbox (topic, payload)
SELECT 'usage', jsonb_build_object(
    'id', id, 'tenant_id', tenant_id, 'user_id', user_id, 'kind', kind,
    'quantity', quantity, 'cost_micros', cost_micros, 'occurred_at', occurred_at)
FROM ins
"""

Insert = Callable[[asyncpg.Connection, uuid.UUID, Sequence[NewRecord]], Awaitable[Any]]


def _records(count: int) -> list[NewRecord]:
    user = uuid.uuid4()
    return [NewRecord(user, "tokens", n, 2 * n, f"k{n}") for n in range(count)]


async def _executemany(
    conn: asyncpg.Connection, tenant: uuid.UUID, records: Sequence[NewRecord]
) -> None:
    async with tenant_transaction(conn, tenant):
        await conn.executemany(
            _ROW_BY_ROW,
            [
                (uuid.uuid4(), tenant, r.user_id, r.kind, r.quantity, r.cost_micros,
                 r.idempotency_key)
                for r in records
            ],
        )  # fmt: skip


async def _stored(db: asyncpg.Connection, tenant: uuid.UUID) -> tuple[int, int]:
    records = await db.fetchval("SELECT count(*) FROM usage_records WHERE tenant_id = $1", tenant)
    outbox = await db.fetchval(
        "SELECT count(*) FROM outbox WHERE payload->>'tenant_id' = $1", str(tenant)
    )
    return int(records), int(outbox)


async def _rows_per_second(
    connections: Sequence[asyncpg.Connection], insert: Insert, size: int, db: asyncpg.Connection
) -> float:
    """Store ROWS records of a new tenant in batches of `size` spread over `connections`;
    rows per second. Every record stored once, with its outbox row."""
    tenant = uuid.uuid4()
    records = _records(ROWS)
    batches = [records[i : i + size] for i in range(0, ROWS, size)]

    async def worker(conn: asyncpg.Connection, mine: Sequence[Sequence[NewRecord]]) -> None:
        for batch in mine:
            await insert(conn, tenant, batch)

    lanes = len(connections)
    started = time.perf_counter()
    await asyncio.gather(
        *(worker(conn, batches[lane::lanes]) for lane, conn in enumerate(connections))
    )
    seconds = time.perf_counter() - started
    assert await _stored(db, tenant) == (ROWS, ROWS)
    return ROWS / seconds


@BATCH
async def test_bench_copy_against_executemany(
    flow_database: str, flow_db: asyncpg.Connection, apex_level: Level
) -> None:
    conn = await asyncpg.connect(flow_database)
    rows: dict[str, Any] = {"rows": ROWS}
    try:
        for size in SIZES:
            copy = await _rows_per_second([conn], insert_batch, size, flow_db)
            many = await _rows_per_second([conn], _executemany, size, flow_db)
            rows[f"copy_rows_per_s_batch_{size}"] = copy
            rows[f"executemany_rows_per_s_batch_{size}"] = many
            rows[f"copy_speedup_batch_{size}"] = copy / many
    finally:
        await conn.close()
    bench_report("db", "batch_insert", rows, apex_level)


@PROCESSING
async def test_bench_copy_on_parallel_connections(
    flow_database: str, flow_db: asyncpg.Connection, apex_level: Level
) -> None:
    connections = [await asyncpg.connect(flow_database) for _ in range(2)]
    rows: dict[str, Any] = {"rows": ROWS, "batch": 1_000}
    try:
        for lanes in (1, 2):
            rate = await _rows_per_second(connections[:lanes], insert_batch, 1_000, flow_db)
            rows[f"copy_rows_per_s_{lanes}_connections"] = rate
    finally:
        for conn in connections:
            await conn.close()
    bench_report("db", "batch_parallel", rows, apex_level)


@PROCESSING
async def test_bench_the_batch_route(
    flow_instance: FlowInstance,
    flow_db: asyncpg.Connection,
    make_data_user: MakeUser,
    apex_level: Level,
) -> None:
    user = await make_data_user(permissions=(RUN_AGENTS,))
    batches = [[usage_body(user.user_id) for _ in range(10_000)] for _ in range(2)]
    async with flow_instance() as client:
        started = time.perf_counter()
        for records in batches:
            response = await client.post(
                "/v1/usage/batch", json={"records": records}, headers=user.headers
            )
            assert response.status_code == 201, response.text
            assert response.json() == {"inserted": 10_000}
        seconds = time.perf_counter() - started
    assert await _stored(flow_db, uuid.UUID(str(user.tenant_id))) == (20_000, 20_000)
    bench_report(
        "db",
        "batch_route",
        {"rows": 20_000, "batch": 10_000, "seconds": seconds, "rows_per_second": 20_000 / seconds},
        apex_level,
    )
