"""Backup and restore of the relay's ClickHouse tables with ClickHouse's own means.

ClickHouse 18.16 (Debian's) has no ``BACKUP`` statement (22.x added it); its documented
backup is ``ALTER TABLE ... FREEZE``: hard links of every data part, taken at once,
under ``<path>/shadow/<N>/``. :func:`freeze` runs it per table and copies the parts
(``checksums.txt`` and all: the server's own format) into the backup directory, with
the statement that created the table and the rows each part holds (its ``count.txt``).
:func:`thaw` creates each table again under a staging name, copies its parts into the
staging table's ``detached/`` folder and ``ALTER TABLE ... ATTACH PART`` each (the server
checks every file against the part's checksums), checks the row count, and only then
renames the staging tables into place; whatever fails first drops the staging tables
and leaves the targets as they were.

The copies are files of the server: backup and restore run on the ClickHouse host (the
table's directory must be readable and writable here), as the server's own user.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import shutil
from pathlib import Path
from typing import Any, Final

from apex.data import clickhouse_sql
from apex.data.clickhouse import ClickHouse, ClickHouseError

__all__ = ["ClickHouseBackupError", "FrozenTable", "check_targets", "freeze", "thaw"]

_STAGING_SUFFIX: Final = "__restoring"
_CREATE: Final = re.compile(r"^\s*CREATE\s+TABLE\s+(IF\s+NOT\s+EXISTS\s+)?\S+", re.IGNORECASE)
_PART: Final = re.compile(r"[A-Za-z0-9_-]+")


class ClickHouseBackupError(RuntimeError):
    """The ClickHouse part of a backup or restore failed (the message says where)."""


@dataclasses.dataclass(frozen=True)
class FrozenTable:
    """One table in a backup: the statement that made it, its parts and their rows."""

    name: str
    create: str
    parts: tuple[str, ...]
    rows: int

    def as_dict(self) -> dict[str, Any]:
        """The table as JSON (the backup's manifest)."""
        return {**dataclasses.asdict(self), "parts": list(self.parts)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FrozenTable:
        """The table from :meth:`as_dict`'s JSON."""
        name = str(data["name"])
        # Names go into statements and paths: only the relay's tables, only part names.
        if name not in clickhouse_sql.CREATE_TABLES:
            raise ClickHouseBackupError(f"the manifest names a table apex.data has not: {name!r}")
        parts = tuple(str(part) for part in data["parts"])
        if not all(_PART.fullmatch(part) for part in parts):
            raise ClickHouseBackupError(f"the manifest names a part that is no part: {parts}")
        return cls(name, str(data["create"]), parts, int(data["rows"]))


async def freeze(clickhouse: ClickHouse, directory: Path) -> list[FrozenTable]:
    """Copy every part of the relay's tables into ``directory/<table>/<part>``."""
    found = await clickhouse.execute(
        clickhouse_sql.TABLE_DEFINITION, {"tables": tuple(clickhouse_sql.CREATE_TABLES)}
    )
    tables = []
    for name, create in found:
        table_dir = await _table_directory(clickhouse, str(name))
        counted = await clickhouse.execute(clickhouse_sql.TABLE_ROWS.format(table=name))
        await clickhouse.execute(clickhouse_sql.FREEZE.format(table=name))
        target = directory / str(name)
        # A table without parts freezes to nothing at all.
        empty = counted == [(0,)]
        parts = await asyncio.to_thread(_take_shadow, table_dir, target, empty=empty)
        rows = sum([await asyncio.to_thread(_part_rows, target / part) for part in parts])
        tables.append(FrozenTable(str(name), str(create), parts, rows))
    return tables


async def check_targets(clickhouse: ClickHouse, tables: list[FrozenTable]) -> None:
    """Raise unless every table of the backup is absent or empty in ``clickhouse``: a
    restore never mixes its rows with others, nor replaces them."""
    existing = await clickhouse.execute(
        clickhouse_sql.TABLE_DEFINITION, {"tables": tuple(t.name for t in tables) or ("",)}
    )
    for name, _ in existing:
        rows = await clickhouse.execute(clickhouse_sql.TABLE_ROWS.format(table=name))
        if rows and rows[0][0]:
            raise ClickHouseBackupError(
                f"ClickHouse table {name} already holds {rows[0][0]} rows: a backup is "
                "restored only into an empty or missing table (drop it first)"
            )


async def thaw(clickhouse: ClickHouse, directory: Path, tables: list[FrozenTable]) -> None:
    """Restore ``tables`` from ``directory`` (see the module's docstring): all or none."""
    await check_targets(clickhouse, tables)
    staged: list[str] = []
    try:
        for table in tables:
            staging = f"{table.name}{_STAGING_SUFFIX}"
            await clickhouse.execute(clickhouse_sql.DROP_TABLE.format(table=staging))
            staged.append(staging)
            create, replaced = _CREATE.subn(f"CREATE TABLE {staging}", table.create, count=1)
            if not replaced:
                raise ClickHouseBackupError(f"not a CREATE TABLE statement: {table.create!r}")
            await clickhouse.execute(create)
            detached = await _table_directory(clickhouse, staging) / "detached"
            for part in table.parts:
                await asyncio.to_thread(
                    shutil.copytree, directory / table.name / part, detached / part
                )
                await clickhouse.execute(
                    clickhouse_sql.ATTACH_PART.format(table=staging), {"part": part}
                )
            rows = await clickhouse.execute(clickhouse_sql.TABLE_ROWS.format(table=staging))
            if rows != [(table.rows,)]:
                raise ClickHouseBackupError(
                    f"{table.name}: {rows[0][0] if rows else 0} rows restored, "
                    f"the backup holds {table.rows}"
                )
        # An empty target (the relay makes its tables on its first pass) gives way.
        for table in tables:
            await clickhouse.execute(clickhouse_sql.DROP_TABLE.format(table=table.name))
            staging = f"{table.name}{_STAGING_SUFFIX}"
            await clickhouse.execute(
                clickhouse_sql.RENAME_TABLE.format(table=staging, target=table.name)
            )
            staged.remove(staging)
    except (ClickHouseError, OSError) as exc:
        raise ClickHouseBackupError(f"ClickHouse restore failed, nothing restored: {exc}") from exc
    finally:
        for staging in staged:
            await clickhouse.execute(clickhouse_sql.DROP_TABLE.format(table=staging))


async def _table_directory(clickhouse: ClickHouse, table: str) -> Path:
    """The folder of ``table``'s data on the server, which must be on this machine."""
    column = await clickhouse.execute(clickhouse_sql.TABLE_DIRECTORY_COLUMN)
    if len(column) != 1:
        raise ClickHouseBackupError(f"system.tables names no data path here: {column}")
    sql = clickhouse_sql.TABLE_DIRECTORY[str(column[0][0])]
    rows = await clickhouse.execute(sql, {"table": table})
    if not rows or not rows[0][0]:
        raise ClickHouseBackupError(f"ClickHouse has no data folder for table {table}")
    path = Path(str(rows[0][0]))
    if not await asyncio.to_thread(path.is_dir):
        raise ClickHouseBackupError(
            f"ClickHouse keeps {table} in {path}, which is not on this machine: back up and "
            "restore on the ClickHouse host"
        )
    return path


def _take_shadow(table_dir: Path, target: Path, *, empty: bool) -> tuple[str, ...]:
    """Move the parts that FREEZE just linked under ``<path>/shadow/<N>/`` to ``target``;
    return their names. One FREEZE makes one ``<N>`` holding only its table (none for an
    ``empty`` table)."""
    target.mkdir(parents=True, exist_ok=False)
    for root in table_dir.parents:
        shadow = root / "shadow"
        if shadow.is_dir():
            relative = table_dir.relative_to(root)
            frozen = [n for n in shadow.iterdir() if n.name.isdigit() and (n / relative).is_dir()]
            if frozen:
                increment = max(frozen, key=lambda n: int(n.name))
                break
    else:
        if empty:
            return ()
        raise ClickHouseBackupError(f"FREEZE left no shadow copy of {table_dir}")
    try:
        parts = sorted(p.name for p in (increment / relative).iterdir() if p.is_dir())
        for part in parts:
            # A copy, not the links: the backup must not change when the server merges.
            shutil.copytree(increment / relative / part, target / part)
    finally:
        shutil.rmtree(increment)
    return tuple(parts)


def _part_rows(part: Path) -> int:
    """The rows of one data part (its ``count.txt``)."""
    return int((part / "count.txt").read_text(encoding="ascii").strip() or 0)
