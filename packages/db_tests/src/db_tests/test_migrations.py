"""001#54 migration sequencing and 002#9 migration rollback with data preserved.

The rules under test (contract-data.md, Behaviours: Migrations): `migrate` applies the
versions in order, once; two migrators at once apply each version once; a migration
(up or down) waiting behind traffic for longer than APEX_MIGRATION_LOCK_TIMEOUT fails
with an error naming the setting and applies nothing (the traffic goes on); a target out
of range is refused; `rollback --to N` reverts the newer versions and keeps the data of
the tables it keeps, and migrating up again brings the dropped tables back (a view
re-made with the kept data) without touching the rest.

L2 runs the library (`apex.data.migrations`) in the test's process; L3 runs the
operator's `python -m apex.data migrate|rollback` processes (exit codes, output, the
setting read from the environment).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass

import asyncpg
import pytest

from apex.data.migrations import MigrationError, load_migrations, migrate, rollback, status
from apex_testkit import Level
from db_tests.cli import data_cli
from db_tests.stores import write_usage

SEQUENCING = pytest.mark.bvj(
    segment="platform", goal="Schema changes apply in order, once, without blocking traffic",
    mrr=6000, scenario="001#54",
)  # fmt: skip
ROLLBACK = pytest.mark.bvj(
    segment="enterprise", goal="A schema rollback never loses the data it keeps",
    mrr=50000, scenario="002#9",
)  # fmt: skip
pytestmark = [pytest.mark.L2, pytest.mark.L3]

# The version that creates the data layer's tables (usage_records, outbox, ...).
USAGE_VERSION = 11
VIEW_MIGRATION = "usage_daily"
# Traffic holds its lock until the test ends it, so any bound proves the give-up; a
# short one keeps the test short (50 ms: each blocked test waits it out once).
SHORT_LOCK_TIMEOUT = 0.05
LOCK_TIMEOUT = 5.0
NEWEST = load_migrations()[-1].version


@dataclass(frozen=True)
class Outcome:
    """How one migrate or rollback ended: the versions it applied (or reverted), or its
    error message."""

    versions: list[int]
    error: str | None = None


@dataclass(frozen=True)
class Migrator:
    """`migrate`/`rollback` on one database: the library at L2, the CLI process at L3."""

    dsn: str
    level: Level

    async def migrate(
        self, to: int | None = None, *, lock_timeout: float = LOCK_TIMEOUT
    ) -> Outcome:
        if self.level is Level.L3:
            target = () if to is None else ("--to", str(to))
            return await self._cli("migrate", *target, lock_timeout=lock_timeout)
        try:
            return Outcome(await migrate(self.dsn, to, lock_timeout=lock_timeout))
        except MigrationError as exc:
            return Outcome([], str(exc))

    async def rollback(self, to: int, *, lock_timeout: float = LOCK_TIMEOUT) -> Outcome:
        if self.level is Level.L3:
            return await self._cli("rollback", "--to", str(to), lock_timeout=lock_timeout)
        try:
            return Outcome(await rollback(self.dsn, to, lock_timeout=lock_timeout))
        except MigrationError as exc:
            return Outcome([], str(exc))

    async def _cli(self, *arguments: str, lock_timeout: float) -> Outcome:
        result = await data_cli(
            self.dsn, *arguments, APEX_MIGRATION_LOCK_TIMEOUT=f"{lock_timeout:g}"
        )
        if result.code == 1:
            return Outcome([], result.output)
        assert result.code == 0, result.output
        done = re.fullmatch(r"(?:applied|reverted) ([\d, ]+)\n", result.output)
        if done is not None:
            return Outcome([int(v) for v in done.group(1).split(", ")])
        # Nothing to do is said so, not left to an empty output.
        nothing = "nothing to apply" if arguments[0] == "migrate" else "nothing to revert"
        assert result.output.startswith(nothing), result.output
        return Outcome([])


@pytest.fixture
def migrator(empty_database: str, apex_level: Level) -> Migrator:
    return Migrator(empty_database, apex_level)


async def _versions(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT version FROM apex_schema_migrations ORDER BY applied_at, version"
        )
    finally:
        await conn.close()
    return [r["version"] for r in rows]


async def _view_version(dsn: str) -> int:
    """The version of the migration that makes usage_daily."""
    (version,) = [v for v, name, _ in await status(dsn) if name == VIEW_MIGRATION]
    return version


async def _usage_rows(conn: asyncpg.Connection) -> list[tuple[object, ...]]:
    rows = await conn.fetch(
        "SELECT id, tenant_id, kind, quantity, cost_micros FROM usage_records ORDER BY id"
    )
    return [tuple(row) for row in rows]


@SEQUENCING
async def test_migrate_applies_every_version_in_order_once(migrator: Migrator) -> None:
    first = await migrator.migrate()
    assert first == Outcome(list(range(1, NEWEST + 1)))
    assert await _versions(migrator.dsn) == list(range(1, NEWEST + 1))
    assert await migrator.migrate() == Outcome([])
    assert await _versions(migrator.dsn) == list(range(1, NEWEST + 1))


@SEQUENCING
async def test_two_migrators_at_once_apply_each_version_once(migrator: Migrator) -> None:
    results = await asyncio.gather(migrator.migrate(), migrator.migrate())
    for result in results:
        assert result.error is None, result.error
    applied = [v for r in results for v in r.versions]
    assert sorted(applied) == list(range(1, NEWEST + 1))
    assert await _versions(migrator.dsn) == list(range(1, NEWEST + 1))


@SEQUENCING
async def test_a_migration_blocked_by_traffic_gives_up_after_the_lock_timeout(
    migrator: Migrator,
) -> None:
    # Setup through the library at every level: only the blocked step is under test.
    await migrate(migrator.dsn, USAGE_VERSION)
    traffic = await asyncpg.connect(migrator.dsn)
    try:
        reading = traffic.transaction()
        await reading.start()
        # A long read holds its table lock until it ends, as traffic does.
        await traffic.fetchval("SELECT count(*) FROM usage_records")
        blocked = await migrator.migrate(lock_timeout=SHORT_LOCK_TIMEOUT)
        assert blocked.error is not None, blocked
        assert "APEX_MIGRATION_LOCK_TIMEOUT" in blocked.error
        # The read went on, and the next migration applied nothing.
        assert await traffic.fetchval("SELECT count(*) FROM usage_records") == 0
        await reading.rollback()
    finally:
        await traffic.close()
    assert await _versions(migrator.dsn) == list(range(1, USAGE_VERSION + 1))
    done = await migrator.migrate()
    assert done.error is None, done.error
    assert await _versions(migrator.dsn) == list(range(1, NEWEST + 1))


@SEQUENCING
async def test_a_rollback_blocked_by_traffic_gives_up_after_the_lock_timeout(
    migrator: Migrator,
) -> None:
    await migrate(migrator.dsn)  # setup: the library at every level
    version = await _view_version(migrator.dsn)
    reader = await asyncpg.connect(migrator.dsn)
    try:
        reading = reader.transaction()
        await reading.start()
        # A long read holds ACCESS SHARE on the view; dropping it needs ACCESS EXCLUSIVE.
        assert await reader.fetchval("SELECT count(*) FROM usage_daily") == 0
        blocked = await migrator.rollback(version - 1, lock_timeout=SHORT_LOCK_TIMEOUT)
        assert blocked.error is not None, blocked
        assert "APEX_MIGRATION_LOCK_TIMEOUT" in blocked.error
        # The reader was not disturbed, and nothing of the migration was undone.
        assert await reader.fetchval("SELECT count(*) FROM usage_daily") == 0
        await reading.commit()
        assert (version, VIEW_MIGRATION, True) in await status(migrator.dsn)

        after = await migrator.rollback(version - 1, lock_timeout=SHORT_LOCK_TIMEOUT)
        assert after == Outcome([version])
    finally:
        await reader.close()


@SEQUENCING
@pytest.mark.parametrize("target", [-1, 10000])
async def test_a_target_out_of_range_is_refused_and_applies_nothing(
    migrator: Migrator, target: int
) -> None:
    result = await migrator.migrate(target)
    assert result.error is not None, result
    assert "cannot migrate to version" in result.error
    conn = await asyncpg.connect(migrator.dsn)
    try:
        assert await conn.fetchval("SELECT to_regclass('users')") is None
    finally:
        await conn.close()


@ROLLBACK
async def test_a_rollback_keeps_the_data_of_the_tables_it_keeps(migrator: Migrator) -> None:
    await migrate(migrator.dsn)  # setup: the library at every level
    view = await _view_version(migrator.dsn)
    conn = await asyncpg.connect(migrator.dsn)
    try:
        await conn.execute(
            "INSERT INTO users (id, email, tier) "
            "VALUES (gen_random_uuid(), 'kept@example.test', 'pro')"
        )
        tenant, user = str(uuid.uuid4()), str(uuid.uuid4())
        for quantity in (3, 5, 8):
            await write_usage(conn, tenant, user, quantity=quantity, kind=f"k{quantity}")
        users_before = await conn.fetch("SELECT * FROM users ORDER BY id")
        usage_before = await _usage_rows(conn)

        # Back before the view (and the versions after it, such as 0014's grant): the
        # view goes, the records stay.
        newer = list(range(NEWEST, view - 1, -1))
        assert await migrator.rollback(view - 1) == Outcome(newer)
        assert await conn.fetchval("SELECT to_regclass('usage_daily')") is None
        assert await _usage_rows(conn) == usage_before
        assert await migrator.migrate() == Outcome(newer[::-1])
        # Re-made WITH DATA: the view already holds the kept records.
        assert await conn.fetchval("SELECT sum(quantity) FROM usage_daily") == 16
        assert await _usage_rows(conn) == usage_before

        # Back before the data layer: its tables go, users stay row for row.
        back = await migrator.rollback(USAGE_VERSION - 1)
        assert back == Outcome(list(range(NEWEST, USAGE_VERSION - 1, -1)))
        assert await conn.fetchval("SELECT to_regclass('usage_records')") is None
        assert await conn.fetchval("SELECT to_regclass('outbox')") is None
        assert await conn.fetch("SELECT * FROM users ORDER BY id") == users_before
        assert await _versions(migrator.dsn) == list(range(1, USAGE_VERSION))
        up = await migrator.migrate()
        assert up == Outcome(list(range(USAGE_VERSION, NEWEST + 1)))
        assert await conn.fetchval("SELECT count(*) FROM usage_records") == 0
        assert await conn.fetch("SELECT * FROM users ORDER BY id") == users_before
        assert await _versions(migrator.dsn) == list(range(1, NEWEST + 1))
    finally:
        await conn.close()
