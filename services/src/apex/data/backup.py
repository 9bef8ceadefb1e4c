"""Backup and restore of the PostgreSQL database with the real ``pg_dump`` / ``pg_restore``.

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
import os
import shutil
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg

__all__ = ["BackupError", "TableComparison", "compare", "dump", "find_tool", "restore"]

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


async def dump(dsn: str, path: str | Path) -> Path:
    """Write the database at ``dsn`` to ``path`` (``pg_dump -Fc``); return the path."""
    target = Path(path)
    await _run("pg_dump", "--format=custom", "--no-owner", f"--file={target}", dsn=dsn)
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
