"""Benchmarks of the data flow (marker perf; `nox -s bench`, or `pytest --pyargs db_tests
--perf -m perf -s`): outbox relay throughput and lag, cache hit rate under load.

Numbers go to a table on stdout and to $APEX_BENCH_DIR/db.json (default reports/bench).
Only correctness can fail a benchmark (every record in ClickHouse once, every read
right), never its speed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from apex.data.cache import Cache
from apex_testkit import Level, RedisNamespace, bench_report
from db_tests.stores import ClickHouseReader, FlowInstance

RELAY = pytest.mark.bvj(
    segment="enterprise", goal="Analytics keep up with usage: relay throughput and lag",
    mrr=10000, scenario="001#51",
)  # fmt: skip
CACHE = pytest.mark.bvj(
    segment="platform", goal="The cache answers most reads under load",
    mrr=60000, scenario="001#66-75",
)  # fmt: skip
pytestmark = [pytest.mark.perf, pytest.mark.L2, pytest.mark.L3]

RECORDS = 5000


async def _backlog(conn: asyncpg.Connection, count: int) -> None:
    """`count` committed usage records with their outbox rows, in one transaction."""
    tenant, user = uuid.uuid4(), uuid.uuid4()
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO usage_records (id, tenant_id, user_id, kind, quantity, cost_micros, "
            "idempotency_key, occurred_at) SELECT gen_random_uuid(), $1, $2, 'tokens', n, n, "
            "'k' || n, now() FROM generate_series(1, $3) AS n",
            tenant,
            user,
            count,
        )
        await conn.execute(
            "INSERT INTO outbox (topic, payload) SELECT 'usage', jsonb_build_object("
            "'id', id, 'tenant_id', tenant_id, 'user_id', user_id, 'kind', kind, "
            "'quantity', quantity, 'cost_micros', cost_micros, 'occurred_at', occurred_at) "
            "FROM usage_records WHERE tenant_id = $1",
            tenant,
        )


@RELAY
@pytest.mark.parametrize("batch", [100, 500])
async def test_relay_throughput_and_lag(
    batch: int,
    flow_instance: FlowInstance,
    flow_db: asyncpg.Connection,
    data_admin: dict[str, str],
    clickhouse: ClickHouseReader,
    apex_level: Level,
) -> None:
    await _backlog(flow_db, RECORDS)
    async with flow_instance(APEX_OUTBOX_BATCH=str(batch)) as client:
        lag_before = await flow_db.fetchval(
            "SELECT extract(epoch FROM now() - min(created_at)) FROM outbox "
            "WHERE relayed_at IS NULL"
        )
        started = time.perf_counter()
        response: httpx.Response = await client.post("/admin/relay/run", headers=data_admin)
        seconds = time.perf_counter() - started
    assert response.status_code == 200, response.text
    assert response.json()["relayed"] == RECORDS
    assert len(await clickhouse.event_ids()) == RECORDS
    bench_report(
        "db",
        f"relay_batch_{batch}",
        {
            "rows": RECORDS,
            "batches": response.json()["batches"],
            "seconds": seconds,
            "rows_per_second": RECORDS / seconds,
            "oldest_pending_seconds_before": float(lag_before or 0.0),
            "pending_after": response.json()["pending"],
        },
        apex_level,
    )


@CACHE
async def test_cache_hit_rate_under_load(
    redis_nodes: tuple[RedisNamespace, ...], apex_level: Level
) -> None:
    tenants = [str(uuid.uuid4()) for _ in range(20)]
    cache = Cache([n.url for n in redis_nodes], prefix=redis_nodes[0].prefix)
    computed = 0

    async def compute_for(tenant: str) -> dict[str, Any]:
        nonlocal computed
        computed += 1
        return {"tenant": tenant}

    async def read(tenant: str) -> None:
        value, _ = await cache.get_or_compute(tenant, lambda: compute_for(tenant))
        assert value == {"tenant": tenant}

    try:
        started = time.perf_counter()
        for _ in range(25):
            await asyncio.gather(*(read(t) for t in tenants for _ in range(4)))
        seconds = time.perf_counter() - started
    finally:
        await cache.close()
    reads = 25 * 4 * len(tenants)
    assert cache.hits + cache.misses == reads
    assert computed == cache.misses
    bench_report(
        "db",
        "cache_hit_rate",
        {
            "reads": reads,
            "nodes": len(redis_nodes),
            "hit_rate": cache.hits / reads,
            "recomputes": computed,
            "reads_per_second": reads / seconds,
        },
        apex_level,
    )
