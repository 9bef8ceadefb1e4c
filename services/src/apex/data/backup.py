"""Backup and restore of apex.data: PostgreSQL with the real ``pg_dump`` / ``pg_restore``,
ClickHouse with its own ``FREEZE`` / ``ATTACH PART`` (:mod:`apex.data.clickhouse_backup`).

:func:`create_backup` backs up both stores into one directory (``python -m apex.data
backup DIR``), :func:`restore_backup` restores both (``restore DIR``) after
:func:`verify_backup` has checked every file against the backup's ``manifest.json``
(SHA-256): a missing or damaged file restores nothing. Both stores are snapshotted at one
moment: the backup takes the relay's pause lock (``outbox.RELAY_PAUSE_LOCK``), so no
relay batch is half done, exports a PostgreSQL snapshot and freezes ClickHouse, then lets
the relay go on while ``pg_dump --snapshot`` writes that snapshot. Every usage or credit
event in the ClickHouse copy has its outbox row in the PostgreSQL copy, and every outbox
row acknowledged there has its event in ClickHouse.

:func:`dump` writes a custom-format archive (``pg_dump -Fc``: compressed, restorable
table by table); :func:`restore` loads one into a database (normally an empty one);
:func:`compare` checks two databases row for row, table by table (the validation of a
restore). The tools are found on PATH, else in Debian's ``/usr/lib/postgresql/<N>/bin``
(newest first: pg_dump refuses a server newer than itself). The password of a DSN goes
to the tools through ``PGPASSWORD``, never on their command line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import glob
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg

from apex.data.clickhouse import ClickHouse
from apex.data.clickhouse_backup import (
    ClickHouseBackupError,
    FrozenTable,
    check_targets,
    freeze,
    thaw,
)
from apex.data.outbox import RELAY_PAUSE_LOCK

__all__ = [
    "BackupError",
    "Manifest",
    "TableComparison",
    "compare",
    "create_backup",
    "dump",
    "find_tool",
    "restore",
    "restore_backup",
    "verify_backup",
]

MANIFEST: Final = "manifest.json"
POSTGRES_ARCHIVE: Final = "postgres.dump"
CLICKHOUSE_FOLDER: Final = "clickhouse"
_FORMAT: Final = 1

_DEBIAN_BINARIES: Final = "/usr/lib/postgresql/*/bin"
# Tables whose rows are compared; the view usage_daily follows from usage_records.
_TABLES: Final = (
    "SELECT format('%I', c.relname) FROM pg_class c "
    "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'm') ORDER BY 1"
)


class BackupError(RuntimeError):
    """A tool is missing or failed (its stderr is in the message)."""


@dataclasses.dataclass(frozen=True)
class TableComparison:
    """One table in two databases: its row counts and whether the rows are equal."""

    table: str
    source_rows: int
    target_rows: int
    equal: bool


def find_tool(name: str) -> str:
    """The path of PostgreSQL tool ``name`` (``pg_dump``, ``pg_restore``)."""
    found = shutil.which(name)
    if found:
        return found

    def major(path: str) -> int:
        version = Path(path).parent.name
        return int(version) if version.isdigit() else 0

    for directory in sorted(glob.glob(_DEBIAN_BINARIES), key=major, reverse=True):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise BackupError(
        f"{name} not found on PATH or in {_DEBIAN_BINARIES}: install the PostgreSQL client "
        "tools (apt-get install postgresql-client)"
    )


def _split_password(dsn: str) -> tuple[str, dict[str, str]]:
    """``dsn`` without its password, and the environment that carries the password."""
    parts = urlsplit(dsn)
    env = dict(os.environ)
    if parts.password is None:
        return dsn, env
    env["PGPASSWORD"] = unquote(parts.password)
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}" if user else host)), env


async def _run(tool: str, *args: str, dsn: str) -> None:
    target, env = _split_password(dsn)
    process = await asyncio.create_subprocess_exec(
        find_tool(tool),
        f"--dbname={target}",
        *args,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        message = stderr.decode(errors="replace").strip()
        raise BackupError(f"{tool} exited with status {process.returncode}: {message}")


async def dump(dsn: str, path: str | Path, *, snapshot: str | None = None) -> Path:
    """Write the database at ``dsn`` to ``path`` (``pg_dump -Fc``); return the path.
    ``snapshot``: an exported snapshot (``pg_export_snapshot()``) to dump, not a new one."""
    target = Path(path)
    at = [f"--snapshot={snapshot}"] if snapshot else []
    await _run("pg_dump", "--format=custom", "--no-owner", *at, f"--file={target}", dsn=dsn)
    if await asyncio.to_thread(_size, target) == 0:
        raise BackupError(f"pg_dump left no archive at {target}")
    return target


async def restore(path: str | Path, dsn: str) -> None:
    """Load the archive at ``path`` into the database at ``dsn`` (``pg_restore``), in one
    transaction: a failed restore leaves the target as it was."""
    source = Path(path)
    if await asyncio.to_thread(_size, source) == 0:
        raise BackupError(f"no backup archive (or an empty one) at {source}")
    await _run(
        "pg_restore", "--no-owner", "--exit-on-error", "--single-transaction", str(source), dsn=dsn
    )


def _size(path: Path) -> int:
    """The size of the file at ``path``; 0 when there is none."""
    return path.stat().st_size if path.is_file() else 0


async def compare(source_dsn: str, target_dsn: str) -> list[TableComparison]:
    """Every table of schema public in either database, compared row for row (an md5 of
    the rows in a canonical order). Read with a role that sees every tenant's rows."""
    source = await asyncpg.connect(source_dsn)
    target = await asyncpg.connect(target_dsn)
    try:
        tables = sorted(
            {row[0] for row in await source.fetch(_TABLES)}
            | {row[0] for row in await target.fetch(_TABLES)}
        )
        result = []
        for table in tables:
            rows_a, digest_a = await _digest(source, table)
            rows_b, digest_b = await _digest(target, table)
            result.append(
                TableComparison(table, rows_a, rows_b, rows_a == rows_b and digest_a == digest_b)
            )
        return result
    finally:
        await source.close()
        await target.close()


async def _digest(conn: asyncpg.Connection, table: str) -> tuple[int, str | None]:
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"public.{table}")
    if not exists:
        return -1, None
    # The table name comes from pg_class, quoted by format('%I').
    row = await conn.fetchrow(
        f"SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) "  # noqa: S608
        f"FROM {table} t"
    )
    return int(row[0]), str(row[1])


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What a backup directory holds: the PostgreSQL archive, the ClickHouse tables (None:
    the backup has no ClickHouse part) and the SHA-256 of every file, by relative path."""

    postgres: str
    clickhouse: tuple[FrozenTable, ...] | None
    files: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        """The manifest as JSON."""
        tables = None if self.clickhouse is None else [t.as_dict() for t in self.clickhouse]
        return {
            "format": _FORMAT,
            "postgres": self.postgres,
            "clickhouse": tables,
            "files": self.files,
        }


async def create_backup(
    directory: str | Path, dsn: str, clickhouse: ClickHouse | None = None
) -> Manifest:
    """Back up the database at ``dsn`` and, given a client, the relay's ClickHouse tables
    into ``directory`` (new or empty), at one moment (see the module's docstring)."""
    target = Path(directory)
    if await asyncio.to_thread(lambda: target.exists() and any(target.iterdir())):
        raise BackupError(f"{target} is not empty: a backup goes into a new or empty folder")
    await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True)
    lock = await asyncpg.connect(dsn)
    reader = await asyncpg.connect(dsn)
    try:
        # A relay batch holds the lock for one short transaction; a wait longer than this
        # is a stuck relay, which the error names.
        await lock.execute("SET lock_timeout = '30s'")
        try:
            await lock.execute("SELECT pg_advisory_lock($1)", RELAY_PAUSE_LOCK)
        except asyncpg.LockNotAvailableError as exc:
            raise BackupError("the outbox relay did not pause within 30 s") from exc
        try:
            transaction = reader.transaction(isolation="repeatable_read", readonly=True)
            await transaction.start()
            snapshot = str(await reader.fetchval("SELECT pg_export_snapshot()"))
            tables = None
            if clickhouse is not None:
                tables = tuple(await freeze(clickhouse, target / CLICKHOUSE_FOLDER))
        finally:
            await lock.execute("SELECT pg_advisory_unlock($1)", RELAY_PAUSE_LOCK)
        await dump(dsn, target / POSTGRES_ARCHIVE, snapshot=snapshot)
        await transaction.rollback()
    except ClickHouseBackupError as exc:
        raise BackupError(str(exc)) from exc
    finally:
        await reader.close()
        await lock.close()
    files = await asyncio.to_thread(_checksums, target)
    manifest = Manifest(POSTGRES_ARCHIVE, tables, files)
    # Written last: a folder without its manifest is an unfinished backup.
    text = json.dumps(manifest.as_dict(), indent=2, sort_keys=True)
    await asyncio.to_thread((target / MANIFEST).write_text, text, encoding="utf-8")
    return manifest


async def verify_backup(directory: str | Path) -> Manifest:
    """The manifest of the backup in ``directory``, after checking that every file it
    names is there with its SHA-256; BackupError names each missing or damaged file."""
    return await asyncio.to_thread(_verify, Path(directory))


async def restore_backup(
    directory: str | Path, dsn: str, clickhouse: ClickHouse | None = None
) -> Manifest:
    """Restore the backup in ``directory``: PostgreSQL into the (empty) database at
    ``dsn``, ClickHouse's tables into ``clickhouse`` (absent or empty there). Nothing is
    restored unless the whole backup verifies and the ClickHouse targets are empty."""
    manifest = await verify_backup(directory)
    if manifest.clickhouse is not None and clickhouse is None:
        raise BackupError(
            "the backup holds ClickHouse tables: restore it with a ClickHouse URL "
            "(APEX_CLICKHOUSE_URL)"
        )
    tables = list(manifest.clickhouse or ())
    try:
        if clickhouse is not None:
            await check_targets(clickhouse, tables)
        await restore(Path(directory) / manifest.postgres, dsn)
        if clickhouse is not None:
            await thaw(clickhouse, Path(directory) / CLICKHOUSE_FOLDER, tables)
    except ClickHouseBackupError as exc:
        raise BackupError(str(exc)) from exc
    return manifest


def _checksums(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under ``directory``, by path relative to it."""
    return {
        path.relative_to(directory).as_posix(): _sha256(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(directory: Path) -> Manifest:
    try:
        data = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupError(
            f"no {MANIFEST} in {directory}: not a backup, or an unfinished one"
        ) from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{directory / MANIFEST} is unreadable: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise BackupError(f"{directory / MANIFEST} is not a manifest of format {_FORMAT}")
    try:
        files = {str(name): str(digest) for name, digest in data["files"].items()}
        tables = data["clickhouse"]
        clickhouse = None if tables is None else tuple(FrozenTable.from_dict(t) for t in tables)
        manifest = Manifest(str(data["postgres"]), clickhouse, files)
    except (KeyError, TypeError, ValueError, AttributeError, ClickHouseBackupError) as exc:
        raise BackupError(f"{directory / MANIFEST} is malformed: {exc!r}") from None
    problems = []
    for name, digest in sorted(files.items()):
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif _sha256(path) != digest:
            problems.append(f"{name} is damaged (its SHA-256 differs)")
    if manifest.postgres not in files:
        problems.append(f"the manifest lists no {manifest.postgres}")
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if problems[5:] else ""
        )
        raise BackupError(f"the backup in {directory} is incomplete, nothing restored: {shown}")
    return manifest
