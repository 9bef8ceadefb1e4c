"""ClickHouse client construction and input checks that need no server."""

from __future__ import annotations

import pytest

from apex.data.clickhouse import ClickHouse, ClickHouseError


def test_from_url_reads_every_part() -> None:
    client = ClickHouse.from_url("clickhouse://bob:p%40ss@ch.local:9440/events")
    assert (client.host, client.port, client.database) == ("ch.local", 9440, "events")
    assert "p@ss" not in repr(client)


def test_from_url_defaults() -> None:
    client = ClickHouse.from_url("clickhouse://localhost")
    assert (client.port, client.database) == (9000, "default")


@pytest.mark.parametrize(
    "url", ["http://localhost:8123", "clickhouse://", "clickhouse://h:99999/x"]
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(ClickHouseError):
        ClickHouse.from_url(url)


@pytest.mark.parametrize(
    ("table", "columns"),
    [("t; DROP TABLE x", ["a"]), ("t", ["a) VALUES"]), ("t", []), ("db.t.x", ["a"])],
)
async def test_insert_refuses_unsafe_identifiers_before_connecting(
    table: str, columns: list[str]
) -> None:
    client = ClickHouse("127.0.0.1", 1)  # nothing listens there: a check must fail first
    with pytest.raises(ClickHouseError):
        await client.insert(table, [(1,)], columns)


async def test_ping_is_false_when_nothing_listens() -> None:
    client = ClickHouse("127.0.0.1", 1, connect_timeout=1)
    assert await client.ping() is False
