"""Versioned SQL migrations, up and down.

Each file ``apex/data/migrations/NNNN_name.sql`` holds an ``-- migrate:up`` section and
a ``-- migrate:down`` section (an empty down section makes the migration
irreversible). Applied versions are recorded in ``apex_schema_migrations`` with the
checksum of their file; a file that changed after it was applied is an error, not
something to paper over.

Each version is applied (or reverted) in its own transaction holding an advisory
lock, so two processes migrating the same database at once apply each version
exactly once. With a ``lock_timeout`` (``APEX_MIGRATION_LOCK_TIMEOUT`` for the CLI) a
migration that waits longer than that for a table lock held by traffic fails with a
clear error, instead of queueing every later query of that table behind it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import asyncpg

__all__ = [
    "Migration",
    "MigrationError",
    "load_migrations",
    "migrate",
    "parse_migration",
    "rollback",
    "status",
]

TABLE: Final = "apex_schema_migrations"
# Any constant works as long as nothing else in the database uses it; this one is
# "apexmig" in ASCII.
ADVISORY_LOCK_ID: Final = 0x61706578_6D6967

_FILENAME = re.compile(r"(?P<version>\d{4})_(?P<name>[a-z0-9][a-z0-9_]*)\.sql")
_MARKER = re.compile(r"^--\s*migrate:(?P<section>up|down)\s*$", re.MULTILINE)

_CREATE_TABLE: Final = """
CREATE TABLE IF NOT EXISTS apex_schema_migrations (
    version int PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """A migration file is malformed, changed after being applied, or cannot be run."""


@dataclasses.dataclass(frozen=True)
class Migration:
    """One parsed migration file."""

    version: int
    name: str
    up: str
    down: str
    checksum: str

    @property
    def reversible(self) -> bool:
        """Whether the file has a non-empty down section."""
        return bool(_strip_comments(self.down))


def parse_migration(filename: str, text: str) -> Migration:
    """Parse one migration file's name and content; raise MigrationError when malformed."""
    match = _FILENAME.fullmatch(filename)
    if match is None:
        raise MigrationError(
            f"{filename}: migration files are named NNNN_name.sql (lower case, e.g. 0001_users.sql)"
        )
    # Normalise line endings first: a checkout with CRLF must not look like drift.
    text = text.replace("\r\n", "\n")
    markers = list(_MARKER.finditer(text))
    sections = [m.group("section") for m in markers]
    if sections != ["up", "down"]:
        raise MigrationError(
            f"{filename}: needs one '-- migrate:up' line followed by one "
            f"'-- migrate:down' line, found {sections or 'none'}"
        )
    if _strip_comments(text[: markers[0].start()]):
        raise MigrationError(f"{filename}: only comments may come before '-- migrate:up'")
    up = text[markers[0].end() : markers[1].start()].strip()
    down = text[markers[1].end() :].strip()
    if not _strip_comments(up):
        raise MigrationError(f"{filename}: the up section is empty")
    return Migration(
        version=int(match.group("version")),
        name=match.group("name"),
        up=up,
        down=down,
        checksum=hashlib.sha256(text.encode()).hexdigest(),
    )


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """All migrations in ``directory`` (default: the ones shipped in apex.data), by version."""
    if directory is None:
        files = [
            (entry.name, entry.read_text(encoding="utf-8"))
            for entry in importlib.resources.files("apex.data").joinpath("migrations").iterdir()
            if entry.name.endswith(".sql")
        ]
    else:
        files = [(path.name, path.read_text(encoding="utf-8")) for path in directory.glob("*.sql")]
    migrations = sorted(
        (parse_migration(name, text) for name, text in files), key=lambda m: m.version
    )
    _check_sequence(migrations)
    return migrations


def _check_sequence(migrations: Sequence[Migration]) -> None:
    for index, migration in enumerate(migrations, start=1):
        if migration.version != index:
            raise MigrationError(
                f"migration versions must run 1, 2, 3... without gaps or duplicates; "
                f"expected {index:04d}, found {migration.version:04d}_{migration.name}.sql"
            )


def _strip_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--")).strip()


async def migrate(
    dsn: str,
    target: int | None = None,
    *,
    migrations: Sequence[Migration] | None = None,
    lock_timeout: float | None = None,
) -> list[int]:
    """Apply pending migrations up to ``target`` (default: newest); return the versions applied."""
    known = list(load_migrations() if migrations is None else migrations)
    head = known[-1].version if known else 0
    if target is None:
        target = head
    if not 0 <= target <= head:
        raise MigrationError(f"cannot migrate to version {target}: known versions are 1..{head}")
    applied: list[int] = []
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            # The lock also covers creating the table: two concurrent
            # CREATE TABLE IF NOT EXISTS can both try to create it and one fails.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_ID)
            await conn.execute(_CREATE_TABLE)
        for migration in known:
            if migration.version > target:
                break
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_ID)
                # Re-read under the lock: another process may have migrated meanwhile.
                recorded = await _recorded(conn)
                _check_drift(recorded, known)
                if migration.version in recorded:
                    continue
                await _run(conn, migration, migration.up, "up", lock_timeout)
                await conn.execute(
                    "INSERT INTO apex_schema_migrations (version, name, checksum) "
                    "VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
                applied.append(migration.version)
    finally:
        await conn.close()
    return applied


async def rollback(
    dsn: str,
    target: int,
    *,
    migrations: Sequence[Migration] | None = None,
    lock_timeout: float | None = None,
) -> list[int]:
    """Revert every applied version above ``target``, newest first; return the versions reverted."""
    if target < 0:
        raise MigrationError(
            f"cannot roll back to version {target}: the lowest target is 0 (empty schema)"
        )
    known = {m.version: m for m in (load_migrations() if migrations is None else migrations)}
    reverted: list[int] = []
    conn = await asyncpg.connect(dsn)
    try:
        if not await _table_exists(conn):
            return reverted
        while True:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_ID)
                recorded = await _recorded(conn)
                _check_drift(recorded, known.values())
                above = sorted((v for v in recorded if v > target), reverse=True)
                if not above:
                    break
                version = above[0]
                migration = known.get(version)
                if migration is None:
                    raise MigrationError(
                        f"cannot roll back version {version}: this code has no file for it "
                        "(is the code older than the database?)"
                    )
                if not migration.reversible:
                    raise MigrationError(
                        f"cannot roll back {_label(migration)}: its down section is empty"
                    )
                await _run(conn, migration, migration.down, "down", lock_timeout)
                await conn.execute("DELETE FROM apex_schema_migrations WHERE version = $1", version)
                reverted.append(version)
    finally:
        await conn.close()
    return reverted


async def status(
    dsn: str, *, migrations: Sequence[Migration] | None = None
) -> list[tuple[int, str, bool]]:
    """``(version, name, applied)`` for every known migration and every applied unknown one."""
    known = list(load_migrations() if migrations is None else migrations)
    conn = await asyncpg.connect(dsn)
    try:
        if await _table_exists(conn):
            rows = await conn.fetch("SELECT version, name FROM apex_schema_migrations")
            recorded = {row["version"]: row["name"] for row in rows}
        else:
            recorded = {}
    finally:
        await conn.close()
    result = [(m.version, m.name, m.version in recorded) for m in known]
    known_versions = {m.version for m in known}
    result.extend((v, name, True) for v, name in recorded.items() if v not in known_versions)
    return sorted(result)


async def _table_exists(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", TABLE))


async def _recorded(conn: asyncpg.Connection) -> dict[int, tuple[str, str]]:
    rows = await conn.fetch("SELECT version, name, checksum FROM apex_schema_migrations")
    return {row["version"]: (row["name"], row["checksum"]) for row in rows}


def _check_drift(recorded: dict[int, tuple[str, str]], known: Iterable[Migration]) -> None:
    for migration in known:
        entry = recorded.get(migration.version)
        if entry is not None and entry[1] != migration.checksum:
            raise MigrationError(
                f"{_label(migration)} changed after it was applied (checksum "
                f"{entry[1][:12]} in the database, {migration.checksum[:12]} on disk): "
                "write a new migration instead of editing an applied one"
            )


async def _run(
    conn: asyncpg.Connection,
    migration: Migration,
    sql: str,
    direction: str,
    lock_timeout: float | None,
) -> None:
    if lock_timeout is not None:
        # After the advisory lock (a second migrator waits its turn, unbounded): only
        # the migration's own table locks are bounded.
        milliseconds = max(1, round(lock_timeout * 1000))
        await conn.execute(f"SET LOCAL lock_timeout = {milliseconds}")
    try:
        # Without arguments asyncpg uses the simple query protocol, which runs a
        # whole multi-statement script in one call.
        await conn.execute(sql)
    except asyncpg.LockNotAvailableError:
        raise MigrationError(
            f"{_label(migration)} ({direction}) waited over {lock_timeout:g} s for a table "
            "lock held by other sessions (APEX_MIGRATION_LOCK_TIMEOUT) and gave up; "
            "nothing of it was applied: retry when traffic allows"
        ) from None
    except asyncpg.PostgresError as exc:
        raise MigrationError(
            f"{_label(migration)} ({direction}) failed: {type(exc).__name__}: {exc}"
        ) from exc


def _label(migration: Migration) -> str:
    return f"migration {migration.version:04d}_{migration.name}"
