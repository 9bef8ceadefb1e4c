"""apex.data's ClickHouse SQL on Debian's 18.16 and on current ClickHouse, answers compared.

18.16 is the kit's server (``clickhouse_database``); current ClickHouse is chdb, the
ClickHouse engine in process (its wheel ships the engine: nothing is downloaded at first
use). ``nox -s clickhouse-compat`` runs this in a venv of its own: chdb's wheels are
about 600 MB, kept out of ``unit`` and the levels.

Every statement of :data:`apex.data.clickhouse_sql.STATEMENTS` is run by the scenario,
on both engines, as the same text: parameters are filled by clickhouse-driver's own
escaping, which is what the driver sends an 18.16 server. The relay's INSERT goes to
18.16 as the driver's native blocks (the relay's path) and to chdb as VALUES literals
(there is no native protocol in process). The backup statements run through the real
:mod:`apex.data.clickhouse_backup` on both: freeze, drop, thaw, rows compared.
:func:`test_every_statement_ran_on_both` fails for a statement no step runs, so a new one
is covered by construction. The one deliberate difference: ``system.tables`` calls a
table's folder ``data_path`` on 18.16 and ``data_paths`` now; each engine runs the
statement that the probe ``TABLE_DIRECTORY_COLUMN`` picks for it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from chdb import session as chdb_session
from clickhouse_driver.util.escape import escape_param, escape_params

from apex.data import clickhouse_backup, clickhouse_sql
from apex.data.clickhouse import ClickHouse
from apex_testkit import eventually

# Statements only one engine can run (see the module's docstring).
ONLY_ON: Mapping[str, str] = {
    "TABLE_DIRECTORY[data_path]": "18.16",
    "TABLE_DIRECTORY[data_paths]": "current",
}
TENANTS = [uuid.UUID(int=0xA), uuid.UUID(int=0xB)]
USER = uuid.UUID(int=0x1)
JANUARY = dt.datetime(2026, 1, 10, 12, 0, 0, tzinfo=dt.UTC)


def pattern(template: str) -> re.Pattern[str]:
    """A template with its ``{identifiers}`` as wildcards."""
    return re.compile(re.sub(r"\\\{\w+\\\}", r"\\w+", re.escape(template)))


class Engine:
    """One ClickHouse, with the statement texts it ran (before parameters are filled)."""

    version: str

    def __init__(self, name: str) -> None:
        self.name = name
        self.ran: list[str] = []

    async def execute(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Rows of ``sql``."""
        self.ran.append(sql)
        return await self._execute(sql, params)

    async def insert(
        self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]
    ) -> None:
        """The relay's INSERT of ``rows``."""
        self.ran.append(clickhouse_sql.insert(table, columns))
        await self._insert(table, rows, columns)

    async def _execute(self, sql: str, params: Mapping[str, Any] | None) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def _insert(
        self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]
    ) -> None:
        raise NotImplementedError


class Server(Engine):
    """The kit's ClickHouse server (18.16), through apex.data's client."""

    def __init__(self, client: ClickHouse, version: str) -> None:
        super().__init__("18.16")
        self.client = client
        self.version = version

    async def _execute(self, sql: str, params: Mapping[str, Any] | None) -> list[tuple[Any, ...]]:
        return await self.client.execute(sql, params)

    async def _insert(
        self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]
    ) -> None:
        await self.client.insert(table, rows, columns)


class Embedded(Engine):
    """Current ClickHouse in process (chdb), in a folder of its own."""

    def __init__(self, path: Path, database: str) -> None:
        super().__init__("current")
        self.session = chdb_session.Session(str(path))
        self.session.query(f"CREATE DATABASE {database}")
        self.session.query(f"USE {database}")
        self.version = str(self.session.query("SELECT version()", "CSV")).strip().strip('"')

    async def _execute(self, sql: str, params: Mapping[str, Any] | None) -> list[tuple[Any, ...]]:
        # What clickhouse-driver sends a server: the parameters escaped into the text.
        text = sql % escape_params(params, None) if params else sql
        result = str(self.session.query(text, "JSONCompact"))
        return [tuple(row) for row in json.loads(result)["data"]] if result.strip() else []

    async def _insert(
        self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]
    ) -> None:
        values = ", ".join("(" + ", ".join(_literal(v) for v in row) + ")" for row in rows)
        self.session.query(f"{clickhouse_sql.insert(table, columns)} {values}")


def _literal(value: Any) -> str:
    """A VALUES literal; an instant as its epoch seconds (no time zone to agree on)."""
    if isinstance(value, dt.datetime):
        return str(int(value.timestamp()))
    return str(escape_param(value, None))


def plain(rows: Sequence[Sequence[Any]]) -> list[tuple[str, ...]]:
    """Rows as text, sorted: the driver's UUIDs and ints and chdb's JSON read alike."""
    return sorted(tuple(str(value) for value in row) for row in rows)


class Both:
    """The two engines, asked the same things."""

    def __init__(self, old: Server, new: Embedded) -> None:
        self.engines = (old, new)

    async def each(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> list[list[tuple[str, ...]]]:
        """Run ``sql`` on both; the rows of each, as text."""
        return [plain(await engine.execute(sql, params)) for engine in self.engines]

    async def agree(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Any]:
        """Run ``sql`` on both; assert the same rows; return them."""
        answers = await self.each(sql, params)
        assert answers[0] == answers[1], (sql, params)
        return answers[0]

    async def insert(self, table: str, rows: Sequence[Sequence[Any]]) -> None:
        for engine in self.engines:
            await engine.insert(table, rows, clickhouse_sql.INSERT_COLUMNS[table])


@pytest.fixture
async def server(clickhouse_database: str) -> AsyncIterator[Server]:
    """A database of this test alone on the kit's 18.16 server (dropped after)."""
    name = f"{urlsplit(clickhouse_database).path.lstrip('/')}_v{uuid.uuid4().hex[:8]}"
    async with ClickHouse.from_url(clickhouse_database) as admin:
        await admin.execute(f"CREATE DATABASE {name}")
        version = str((await admin.execute("SELECT version()"))[0][0])
        try:
            url = urlunsplit(urlsplit(clickhouse_database)._replace(path=f"/{name}"))
            async with ClickHouse.from_url(url) as client:
                yield Server(client, version)
        finally:
            await admin.execute(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Embedded]:
    engine = Embedded(tmp_path / "chdb", "apex")
    yield engine
    engine.session.close()


def usage(
    event: int,
    tenant: uuid.UUID,
    kind: str,
    quantity: int,
    days: int,
    version: int,
    labels: Mapping[str, str] | None = None,
) -> tuple[Any, ...]:
    pairs = sorted((labels or {}).items())
    return (
        uuid.UUID(int=event), tenant, USER, kind, quantity, quantity * 10,
        JANUARY + dt.timedelta(days=days), version,
        [key for key, _ in pairs], [value for _, value in pairs],
    )  # fmt: skip


# usage_events as the relay made it before the labels (issue 11).
OLD_USAGE_EVENTS = (
    "CREATE TABLE usage_events (id UUID, tenant_id UUID, user_id UUID, kind String, "
    "quantity UInt64, cost_micros UInt64, occurred_at DateTime, version UInt64) "
    "ENGINE = ReplacingMergeTree(version) PARTITION BY toYYYYMM(occurred_at) "
    "ORDER BY (tenant_id, id)"
)
MINI = {"agent": "assistant", "model": "gpt-4o-mini", "provider": "llm", "run_id": "r1"}
WRITER = {"agent": "writer", "model": "gpt-4o"}


async def test_every_statement_answers_alike_on_both(
    server: Server, embedded: Embedded, tmp_path: Path
) -> None:
    assert server.version.startswith("18.16"), server.version
    assert int(embedded.version.split(".")[0]) >= 25, embedded.version
    both = Both(server, embedded)
    assert await both.agree(clickhouse_sql.PING) == [("1",)]
    # A usage_events made before the labels: the relay's start adds their columns.
    await both.agree(OLD_USAGE_EVENTS)
    assert await both.agree(clickhouse_sql.LABEL_COLUMNS) == []
    assert await both.agree(clickhouse_sql.ADD_LABEL_COLUMNS) == []
    labels = [("label_keys",), ("label_values",)]
    assert await both.agree(clickhouse_sql.LABEL_COLUMNS) == labels
    for ddl in clickhouse_sql.CREATE_TABLES.values():
        assert await both.agree(ddl) == []
        assert await both.agree(ddl) == []  # IF NOT EXISTS: the relay's start, again

    # Two relay batches; event 2 is sent twice (a relay crash before the ack), then a
    # newer version of event 3: FINAL keeps one row of each, the newest.
    first = [
        usage(1, TENANTS[0], "tokens", 5, 0, 1, MINI),
        usage(2, TENANTS[0], "tokens", 7, 1, 2, MINI),
        usage(3, TENANTS[0], "images", 2, 40, 3, WRITER),
        usage(4, TENANTS[1], "tokens", 11, 2, 4),
    ]
    await both.insert("usage_events", first)
    await both.insert("usage_events", [first[1], usage(3, TENANTS[0], "images", 9, 40, 5, WRITER)])
    credits = [
        (uuid.UUID(int=100 + n), TENANTS[0], TENANTS[1], 5 * n, JANUARY, 10 + n) for n in range(3)
    ]
    await both.insert("credit_events", credits)

    everything = {"since": 0, "until": 4_294_967_295}
    january = {"since": int(JANUARY.timestamp()), "until": int(JANUARY.timestamp()) + 20 * 86400}
    tenant = str(TENANTS[0])
    analytics = clickhouse_sql.ANALYTICS
    assert await both.agree(analytics, {"tenant": tenant, **everything}) == [
        ("images", "9", "90"),
        ("tokens", "12", "120"),
    ]
    assert await both.agree(analytics, {"tenant": tenant, **january}) == [("tokens", "12", "120")]
    assert await both.agree(analytics, {"tenant": str(TENANTS[1]), **everything}) == [
        ("tokens", "11", "110")
    ]
    assert await both.agree(analytics, {"tenant": str(uuid.UUID(int=0xC)), **everything}) == []
    assert len(await both.agree(clickhouse_sql.EVENT_USERS)) == 4
    # Cost per agent and model, from the labels (a record without them reads as '').
    by_label = clickhouse_sql.COSTS_BY_AGENT_MODEL
    assert await both.agree(by_label, {"tenant": tenant, **everything}) == [
        ("assistant", "gpt-4o-mini", "12", "120"),
        ("writer", "gpt-4o", "9", "90"),
    ]
    assert await both.agree(by_label, {"tenant": str(TENANTS[1]), **everything}) == [
        ("", "", "11", "110")
    ]
    # apex.billing's metering: per kind, agent and model, with the count of events.
    by_line = clickhouse_sql.USAGE_BY_LINE
    assert await both.agree(by_line, {"tenant": tenant, **everything}) == [
        ("images", "writer", "gpt-4o", "9", "90", "1"),
        ("tokens", "assistant", "gpt-4o-mini", "12", "120", "2"),
    ]
    assert await both.agree(by_line, {"tenant": tenant, **january}) == [
        ("tokens", "assistant", "gpt-4o-mini", "12", "120", "2")
    ]

    # The backup's statements, through the real module on each engine.
    # (Each engine spells a CREATE statement its own way: the names are compared.)
    tables = await both.each(
        clickhouse_sql.TABLE_DEFINITION, {"tables": tuple(clickhouse_sql.CREATE_TABLES)}
    )
    assert [[row[0] for row in rows] for rows in tables] == [["credit_events", "usage_events"]] * 2
    probes = await both.each(clickhouse_sql.TABLE_DIRECTORY_COLUMN)
    assert probes == [[("data_path",)], [("data_paths",)]]
    final = "SELECT * FROM {table} FINAL"
    before = {t: await both.agree(final.format(table=t)) for t in clickhouse_sql.CREATE_TABLES}
    for engine in both.engines:
        backup = tmp_path / f"backup-{engine.name}"
        frozen = await clickhouse_backup.freeze(engine, backup)  # type: ignore[arg-type]
        assert {t.name: t.rows for t in frozen}["credit_events"] == 3
        for table in frozen:
            await engine.execute(clickhouse_sql.DROP_TABLE.format(table=table.name))
        await clickhouse_backup.thaw(engine, backup, frozen)  # type: ignore[arg-type]
    for table, rows in before.items():
        assert await both.agree(final.format(table=table)) == rows
    assert await both.agree(clickhouse_sql.TABLE_ROWS.format(table="credit_events")) == [("3",)]

    # apex.data.references' repair: a mutation, waited for.
    await both.agree(clickhouse_sql.DELETE_EVENTS, {"ids": [str(uuid.UUID(int=4))]})

    async def mutations_done() -> bool:
        # Each engine finishes in its own time: wait for both.
        return await both.each(clickhouse_sql.PENDING_MUTATIONS) == [[("0",)]] * 2

    await eventually(mutations_done, timeout=30, message="the deletion of event 4")
    assert len(await both.agree(clickhouse_sql.EVENT_USERS)) == 3

    # By construction: every statement of the module ran, on both (ONLY_ON aside).
    for name, template in clickhouse_sql.STATEMENTS.items():
        ran_on = {e.name for e in both.engines if any(map(pattern(template).fullmatch, e.ran))}
        assert ran_on == ({ONLY_ON[name]} if name in ONLY_ON else {"18.16", "current"}), name
