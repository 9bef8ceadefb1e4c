"""The ClickHouse client against a real server (SQL that 18.16 and current releases accept)."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from apex.data.clickhouse import ClickHouse, ClickHouseError


async def test_ping_insert_select(clickhouse_database: str) -> None:
    table = f"events_{uuid.uuid4().hex[:8]}"
    async with ClickHouse.from_url(clickhouse_database) as client:
        assert await client.ping() is True
        await client.execute(
            f"CREATE TABLE {table} (id UInt32, name String, at DateTime) "
            "ENGINE = MergeTree() ORDER BY id"
        )
        try:
            start = dt.datetime(2024, 1, 1)
            rows = [(i, f"event-{i}", start + dt.timedelta(seconds=i)) for i in range(100)]
            assert await client.insert(table, rows, ["id", "name", "at"]) == 100
            assert await client.insert(table, [], ["id"]) == 0
            result = await client.execute(
                f"SELECT count(), sum(id), max(name) FROM {table} WHERE id >= %(low)s",  # noqa: S608
                {"low": 50},
            )
            assert result == [(50, sum(range(50, 100)), "event-99")]
        finally:
            await client.execute(f"DROP TABLE {table}")


async def test_query_errors_are_clickhouse_errors(clickhouse_database: str) -> None:
    async with ClickHouse.from_url(clickhouse_database) as client:
        with pytest.raises(ClickHouseError, match="ClickHouse query failed"):
            await client.execute("SELECT * FROM no_such_table_anywhere")
        # The connection is still usable afterwards.
        assert await client.ping() is True
