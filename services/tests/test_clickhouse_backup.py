"""The ClickHouse half of apex.data's backup (FREEZE, ATTACH PART) on the kit's server,
and the manifest check that runs before anything is restored."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from apex.data import clickhouse_sql
from apex.data.backup import MANIFEST, BackupError, verify_backup
from apex.data.clickhouse import ClickHouse
from apex.data.clickhouse_backup import ClickHouseBackupError, freeze, thaw

MOMENT = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


@pytest.fixture
async def clickhouse(clickhouse_database: str) -> AsyncIterator[ClickHouse]:
    """A database of this test alone (dropped after), with the relay's tables."""
    name = f"{urlsplit(clickhouse_database).path.lstrip('/')}_cb{uuid.uuid4().hex[:8]}"
    async with ClickHouse.from_url(clickhouse_database) as admin:
        await admin.execute(f"CREATE DATABASE {name}")
        try:
            url = urlunsplit(urlsplit(clickhouse_database)._replace(path=f"/{name}"))
            async with ClickHouse.from_url(url) as client:
                for ddl in clickhouse_sql.CREATE_TABLES.values():
                    await client.execute(ddl)
                yield client
        finally:
            await admin.execute(f"DROP DATABASE IF EXISTS {name}")


async def credit_rows(client: ClickHouse, count: int) -> None:
    rows = [
        (uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), n, MOMENT + dt.timedelta(days=40 * n), n)
        for n in range(count)
    ]
    await client.insert("credit_events", rows, clickhouse_sql.INSERT_COLUMNS["credit_events"])


async def table_names(client: ClickHouse) -> list[str]:
    rows = await client.execute("SELECT name FROM system.tables WHERE database = currentDatabase()")
    return sorted(str(row[0]) for row in rows)


async def test_freeze_then_thaw_restores_every_part(clickhouse: ClickHouse, tmp_path: Path) -> None:
    await credit_rows(clickhouse, 3)  # three months: three partitions
    before = sorted(await clickhouse.execute("SELECT * FROM credit_events"))

    frozen = {t.name: t for t in await freeze(clickhouse, tmp_path / "ch")}
    assert (frozen["credit_events"].rows, len(frozen["credit_events"].parts)) == (3, 3)
    assert (frozen["usage_events"].rows, frozen["usage_events"].parts) == (0, ())
    await clickhouse.execute("DROP TABLE credit_events")
    await thaw(clickhouse, tmp_path / "ch", list(frozen.values()))

    assert sorted(await clickhouse.execute("SELECT * FROM credit_events")) == before
    assert await table_names(clickhouse) == ["credit_events", "usage_events"]


async def test_a_table_with_rows_is_never_overwritten(
    clickhouse: ClickHouse, tmp_path: Path
) -> None:
    await credit_rows(clickhouse, 2)
    frozen = await freeze(clickhouse, tmp_path / "ch")

    with pytest.raises(ClickHouseBackupError, match="credit_events already holds 2 rows"):
        await thaw(clickhouse, tmp_path / "ch", frozen)
    assert await table_names(clickhouse) == ["credit_events", "usage_events"]


async def test_a_part_the_server_refuses_leaves_nothing_behind(
    clickhouse: ClickHouse, tmp_path: Path
) -> None:
    await credit_rows(clickhouse, 2)
    frozen = await freeze(clickhouse, tmp_path / "ch")
    await clickhouse.execute("DROP TABLE credit_events")
    # Past the manifest (thaw alone): ClickHouse's own checksums refuse the part.
    column = sorted((tmp_path / "ch" / "credit_events").glob("*/amount_micros.bin"))[-1]
    column.write_bytes(column.read_bytes()[:5])

    with pytest.raises(ClickHouseBackupError, match="nothing restored"):
        await thaw(clickhouse, tmp_path / "ch", frozen)
    assert await table_names(clickhouse) == ["usage_events"]  # no staging table left


async def test_verify_names_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match=r"no manifest\.json"):
        await verify_backup(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json", encoding="utf-8")
    with pytest.raises(BackupError, match="unreadable"):
        await verify_backup(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": 1}), encoding="utf-8")
    with pytest.raises(BackupError, match="malformed"):
        await verify_backup(tmp_path)
    for table in (
        {"name": "users; DROP", "parts": []},
        {"name": "usage_events", "parts": ["../x"]},
    ):
        entry = {"create": "CREATE TABLE t", "rows": 0, **table}
        manifest = {"format": 1, "postgres": "p", "clickhouse": [entry], "files": {}}
        (tmp_path / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
        with pytest.raises(BackupError, match=r"malformed.*the manifest names a"):
            await verify_backup(tmp_path)

    (tmp_path / "postgres.dump").write_bytes(b"PGDMP archive")
    (tmp_path / "part.bin").write_bytes(b"columns")
    manifest = {
        "format": 1,
        "postgres": "postgres.dump",
        "clickhouse": None,
        "files": {"postgres.dump": "0" * 64, "part.bin": "1" * 64, "gone.bin": "2" * 64},
    }
    (tmp_path / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(BackupError) as caught:
        await verify_backup(tmp_path)
    assert "gone.bin is missing; part.bin is damaged" in str(caught.value)
    assert "postgres.dump is damaged" in str(caught.value)
