"""001#54 migration sequencing and 002#9 migration rollback with data preserved.

The rules under test (contract-data.md, Behaviours): `python -m apex.data migrate`
applies the versions in order, once; two migrators at once apply each version once; a
migration waiting behind traffic for longer than APEX_MIGRATION_LOCK_TIMEOUT fails with
a clear error and applies nothing (traffic goes on); `rollback --to N` reverts the newer
versions and keeps the data of the tables it keeps, and migrating up again brings the
dropped tables back empty without touching the rest.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import asyncpg
import pytest

from db_tests.cli import data_cli

SEQUENCING = pytest.mark.bvj(
    segment="platform", goal="Schema changes apply in order, once, without blocking traffic",
    mrr=5000, scenario="001#54",
)  # fmt: skip
ROLLBACK = pytest.mark.bvj(
    segment="enterprise", goal="A schema rollback never loses the data it keeps",
    mrr=10000, scenario="002#9",
)  # fmt: skip

# The version that creates the data layer's tables (usage_records, outbox, ...).
USAGE_VERSION = 10


async def _versions(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT version FROM apex_schema_migrations ORDER BY applied_at, version"
        )
    finally:
        await conn.close()
    return [r["version"] for r in rows]


async def _newest(dsn: str) -> int:
    result = await data_cli(dsn, "status")
    assert result.code == 0, result.output
    return max(int(line.split()[0]) for line in result.output.splitlines() if line.strip())


def _applied(output: str) -> list[int]:
    match = re.search(r"applied ([\d, ]+)", output)
    return [int(v) for v in match.group(1).split(", ")] if match else []


@SEQUENCING
@pytest.mark.L2
async def test_migrate_applies_every_version_in_order_once(empty_database: str) -> None:
    newest = await _newest(empty_database)
    first = await data_cli(empty_database, "migrate")
    assert first.code == 0, first.output
    assert _applied(first.output) == list(range(1, newest + 1))
    assert await _versions(empty_database) == list(range(1, newest + 1))
    again = await data_cli(empty_database, "migrate")
    assert again.code == 0, again.output
    assert "nothing to apply" in again.output
    assert await _versions(empty_database) == list(range(1, newest + 1))


@SEQUENCING
@pytest.mark.L2
async def test_two_migrators_at_once_apply_each_version_once(empty_database: str) -> None:
    newest = await _newest(empty_database)
    results = await asyncio.gather(
        data_cli(empty_database, "migrate"), data_cli(empty_database, "migrate")
    )
    for result in results:
        assert result.code == 0, result.output
    applied = [v for r in results for v in _applied(r.output)]
    assert sorted(applied) == list(range(1, newest + 1))
    assert await _versions(empty_database) == list(range(1, newest + 1))


@SEQUENCING
@pytest.mark.L2
async def test_a_migration_blocked_by_traffic_gives_up_after_the_lock_timeout(
    empty_database: str,
) -> None:
    newest = await _newest(empty_database)
    up_to_usage = await data_cli(empty_database, "migrate", "--to", str(USAGE_VERSION))
    assert up_to_usage.code == 0, up_to_usage.output
    traffic = await asyncpg.connect(empty_database)
    try:
        reading = traffic.transaction()
        await reading.start()
        # A long read holds its table lock until it ends, as traffic does.
        await traffic.fetchval("SELECT count(*) FROM usage_records")
        blocked = await data_cli(empty_database, "migrate", APEX_MIGRATION_LOCK_TIMEOUT="0.2")
        assert blocked.code == 1, blocked.output
        assert "APEX_MIGRATION_LOCK_TIMEOUT" in blocked.output
        # The read went on, and the next migration applied nothing.
        assert await traffic.fetchval("SELECT count(*) FROM usage_records") == 0
        await reading.rollback()
    finally:
        await traffic.close()
    assert await _versions(empty_database) == list(range(1, USAGE_VERSION + 1))
    done = await data_cli(empty_database, "migrate", APEX_MIGRATION_LOCK_TIMEOUT="5")
    assert done.code == 0, done.output
    assert await _versions(empty_database) == list(range(1, newest + 1))


@SEQUENCING
@pytest.mark.L2
@pytest.mark.parametrize("target", ["-1", "10000"])
async def test_a_target_out_of_range_is_refused_and_applies_nothing(
    empty_database: str, target: str
) -> None:
    result = await data_cli(empty_database, "migrate", "--to", target)
    assert result.code == 1, result.output
    assert "cannot migrate to version" in result.output
    conn = await asyncpg.connect(empty_database)
    try:
        assert await conn.fetchval("SELECT to_regclass('users')") is None
    finally:
        await conn.close()


async def _seed(conn: Any) -> None:
    await conn.execute(
        "INSERT INTO users (id, email, tier) VALUES (gen_random_uuid(), 'kept@example.test', 'pro')"
    )
    await conn.execute(
        "INSERT INTO usage_records (id, tenant_id, user_id, kind, quantity, cost_micros, "
        "idempotency_key) VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), "
        "'tokens', 1, 1, 'k')"
    )


@ROLLBACK
@pytest.mark.L3
async def test_a_rollback_keeps_the_data_of_the_tables_it_keeps(empty_database: str) -> None:
    newest = await _newest(empty_database)
    assert (await data_cli(empty_database, "migrate")).code == 0
    conn = await asyncpg.connect(empty_database)
    try:
        await _seed(conn)
        users_before = await conn.fetch("SELECT * FROM users ORDER BY id")
        back = await data_cli(empty_database, "rollback", "--to", str(USAGE_VERSION - 1))
        assert back.code == 0, back.output
        assert await conn.fetchval("SELECT to_regclass('usage_records')") is None
        assert await conn.fetchval("SELECT to_regclass('outbox')") is None
        assert await conn.fetch("SELECT * FROM users ORDER BY id") == users_before
        assert await _versions(empty_database) == list(range(1, USAGE_VERSION))
        up = await data_cli(empty_database, "migrate")
        assert up.code == 0, up.output
        assert await conn.fetchval("SELECT count(*) FROM usage_records") == 0
        assert await conn.fetch("SELECT * FROM users ORDER BY id") == users_before
        assert await _versions(empty_database) == list(range(1, newest + 1))
    finally:
        await conn.close()
