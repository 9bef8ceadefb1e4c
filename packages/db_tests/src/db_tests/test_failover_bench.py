"""Benchmark of 001#56 database failover (marker perf; `nox -s bench`, or
`pytest --pyargs db_tests --level L3 --perf -m perf -s -k failover`).

Through the service, with the primary given as a multi-host DSN: 50 writes acknowledged
and replicated, the primary killed and the replica promoted, then writes until one is
acknowledged. Reported to $APEX_BENCH_DIR/db.json: the seconds from the kill to the first
acknowledged write on the new primary (the service's reconnect, with its backoff), and
the acknowledged writes lost, which must be 0 (the only thing that can fail it).
"""

from __future__ import annotations

import time

import asyncpg
import pytest

from apex_testkit import Level, PostgresPair, bench_report
from db_tests.cli import migrate
from db_tests.client import RUN_AGENTS, MakeUser, OpenData, usage_body

FAILOVER = pytest.mark.bvj(
    segment="enterprise", goal="Losing the primary database loses no acknowledged usage",
    mrr=20000, scenario="001#56",
)  # fmt: skip
pytestmark = [FAILOVER, pytest.mark.perf, pytest.mark.L3]

WRITES = 50


async def test_bench_failover_time_and_writes_lost(
    data_with: OpenData, postgres_pair: PostgresPair, make_data_user: MakeUser, apex_level: Level
) -> None:
    user = await make_data_user(permissions=(RUN_AGENTS,))
    await migrate(postgres_pair.primary_url)
    postgres_pair.replica.wait_caught_up(timeout=30)
    client = await data_with(
        APEX_DATABASE_URL=postgres_pair.multi_host_url,
        APEX_DB_CONNECT_DEADLINE="30",
        APEX_DB_RETRY_BACKOFF="0.05/0.5",
    )
    keys, lsn = [], ""
    for _ in range(WRITES):
        body = usage_body(user.user_id)
        response = await client.post("/v1/usage", json=body, headers=user.headers)
        assert response.status_code == 201, response.text
        keys.append(body["idempotency_key"])
        lsn = response.headers["X-Apex-LSN"]
    postgres_pair.replica.wait_for_lsn(lsn, timeout=30)

    started = time.perf_counter()
    postgres_pair.kill_primary()
    postgres_pair.promote()
    attempts = 0
    while True:
        attempts += 1
        after = await client.post("/v1/usage", json=usage_body(user.user_id), headers=user.headers)
        if after.status_code == 201:
            break
        assert attempts < 100, f"no write acknowledged after the failover: {after.text}"
    failover = time.perf_counter() - started

    conn = await asyncpg.connect(postgres_pair.replica.url)
    try:
        found = await conn.fetchval(
            "SELECT count(*) FROM usage_records WHERE idempotency_key = ANY($1)", keys
        )
    finally:
        await conn.close()
    lost = WRITES - int(found)
    bench_report(
        "db",
        "failover",
        {
            "acknowledged_before": WRITES,
            "lost": lost,
            "seconds_to_first_write": round(failover, 3),
            "attempts": attempts,
        },
        apex_level,
    )
    assert lost == 0, f"{lost} acknowledged writes lost in the failover"
