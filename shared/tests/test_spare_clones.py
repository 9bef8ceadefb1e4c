"""`migrated_database` hands out clones of the run's template made one ahead
(`postgres.SpareClones`): each is fresh (migrated, empty, nothing an earlier test did),
the test's alone, and nothing is left once the clones are closed."""

from __future__ import annotations

from urllib.parse import urlsplit

import asyncpg

from apex_testkit import _loop, wait_for
from apex_testkit._provisioning import postgres
from apex_testkit._sut.wiring import migrate


async def _state(dsn: str) -> tuple[int, dict[str, int]]:
    """(migrations applied, rows per table of schema public) of the database at `dsn`."""
    conn = await asyncpg.connect(dsn)
    try:
        migrations = int(await conn.fetchval("SELECT count(*) FROM apex_schema_migrations"))
        tables = [
            row[0]
            for row in await conn.fetch(
                "SELECT format('%I', tablename) FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename <> 'apex_schema_migrations'"
            )
        ]
        rows = {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in tables}  # noqa: S608
        return migrations, rows
    finally:
        await conn.close()


async def _write(dsn: str) -> None:
    """What a test may leave in its own database: rows, and a table of its own."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO audit_events (action, subject, actor) VALUES ('x', 'y', 'selftest')"
        )
        await conn.execute("CREATE TABLE scratch (a int); INSERT INTO scratch VALUES (1)")
    finally:
        await conn.close()


async def _databases(server_url: str, prefix: str) -> set[str]:
    conn = await asyncpg.connect(server_url)
    try:
        query = "SELECT datname FROM pg_database WHERE starts_with(datname, $1)"
        rows = await conn.fetch(query, prefix)
        return {row[0] for row in rows}
    finally:
        await conn.close()


def test_each_clone_is_fresh_and_its_own_and_close_drops_the_spare(
    apex_worker, apex_run, postgres_database
):
    server = apex_worker.server("postgres")
    prefix = f"{apex_run.name}_spares"
    clones = postgres.SpareClones(apex_run, server, prefix, migrate)
    taken: list[str] = []
    try:
        for _ in range(3):
            name, dsn = clones.take()
            assert name not in taken
            assert urlsplit(dsn).path == f"/{name}"
            assert dsn != postgres_database
            migrations, rows = _loop.run(_state(dsn))
            assert migrations > 0, "a clone of the migrated template"
            assert "scratch" not in rows, "no table an earlier test made"
            assert not any(rows.values()), rows
            _loop.run(_write(dsn))
            postgres.drop_database(server.url, name)  # what the fixture does after the test
            taken.append(name)
        # The one made ahead for a next test (being made now), and nothing else.
        spares = wait_for(
            lambda: _loop.run(_databases(server.url, prefix)), timeout=30, message="the spare"
        )
        assert len(spares) == 1, spares
        assert not spares & set(taken), spares
    finally:
        clones.close()
    assert _loop.run(_databases(server.url, prefix)) == set()
