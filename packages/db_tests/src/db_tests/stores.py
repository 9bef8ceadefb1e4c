"""Direct access to apex.data's stores, for the tests that prove state (L2/L3 only: a
deployment's stores are not the tests' to read).

Public: `write_usage` (a usage record and its outbox row, written the way the service
writes them: one transaction, as the tenant role, in the payload shape of
contract-data.md), `blocked_by` (backends waiting for a lock the test holds),
`ClickHouseReader` (usage events read with FINAL, as the platform reads them, and raw).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg
import httpx
from clickhouse_driver import Client

__all__ = ["ClickHouseReader", "FlowInstance", "blocked_by", "ended", "write_usage"]

# `async with flow_instance(**settings) as client`: the type of the `flow_instance` fixture.
FlowInstance = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


async def write_usage(
    conn: asyncpg.Connection,
    tenant_id: str,
    user_id: str,
    *,
    kind: str = "tokens",
    quantity: int = 100,
    cost_micros: int = 250,
    occurred_at: dt.datetime | None = None,
    commit: bool = True,
    notify: bool = False,
) -> str:
    """Insert one usage record and its outbox row in one tenant transaction; roll it back
    instead of committing when `commit` is False. Returns the record's id."""
    record_id = str(uuid.uuid4())
    moment = occurred_at or dt.datetime.now(dt.UTC).replace(microsecond=0)
    payload = {
        "id": record_id,
        "tenant_id": tenant_id,
        "user_id": user_id,
        "kind": kind,
        "quantity": quantity,
        "cost_micros": cost_micros,
        "occurred_at": moment.isoformat(),
    }
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.execute("SELECT set_config('apex.tenant_id', $1, true)", tenant_id)
        await conn.execute("SET LOCAL ROLE apex_tenant")
        await conn.execute(
            "INSERT INTO usage_records (id, tenant_id, user_id, kind, quantity, cost_micros, "
            "idempotency_key, occurred_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            uuid.UUID(record_id),
            uuid.UUID(tenant_id),
            uuid.UUID(user_id),
            kind,
            quantity,
            cost_micros,
            uuid.uuid4().hex,
            moment,
        )
        await conn.execute(
            "INSERT INTO outbox (topic, payload) VALUES ('usage', $1::jsonb)", json.dumps(payload)
        )
        if notify:
            await conn.execute("SELECT pg_notify('apex_outbox', '')")
    except BaseException:
        await transaction.rollback()
        raise
    if commit:
        await transaction.commit()
    else:
        await transaction.rollback()
    return record_id


async def blocked_by(conn: asyncpg.Connection) -> list[int]:
    """PIDs of the backends waiting for a lock that `conn` holds (a table or a row)."""
    # pg_locks, not pg_stat_activity: the latter is a snapshot taken once per transaction,
    # and the test asks from inside the transaction that holds the lock.
    rows = await conn.fetch(
        "SELECT DISTINCT pid FROM pg_locks WHERE NOT granted "
        "AND pg_backend_pid() = ANY(pg_blocking_pids(pid))"
    )
    return [row["pid"] for row in rows]


async def ended(conn: asyncpg.Connection, pids: list[int]) -> bool:
    """Whether none of the backends `pids` is left (a crashed client's are ended by
    PostgreSQL once it notices the client gone)."""
    alive = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids
    )
    return bool(alive == 0)


class ClickHouseReader:
    """The worker's ClickHouse database, read the way the platform reads it."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._client = Client(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 9000,
            user=unquote(parts.username) if parts.username else "default",
            password=unquote(parts.password) if parts.password else "",
            database=unquote(parts.path.lstrip("/")) or "default",
            settings={"max_execution_time": 30},
        )

    async def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Rows of `sql`."""
        return list(await asyncio.to_thread(self._client.execute, sql, params))

    async def table(self, table: str, columns: str, *, final: bool = True) -> list[Any]:
        """`SELECT <columns> FROM <table> [FINAL]`, sorted; [] while the table does not
        exist yet (the relay makes it on its first pass)."""
        exists = await self.execute(
            "SELECT count() FROM system.tables WHERE database = currentDatabase() "
            "AND name = %(table)s",
            {"table": table},
        )
        if exists == [(0,)]:
            return []
        sql = f"SELECT {columns} FROM {table}"  # noqa: S608 - the tests' own names
        return sorted(await self.execute(f"{sql} FINAL" if final else sql))

    async def events(self, *, final: bool = True) -> list[tuple[str, int, int]]:
        """(id, quantity, cost_micros) of every usage event (FINAL: each id once)."""
        rows = await self.table("usage_events", "id, quantity, cost_micros", final=final)
        return sorted((str(row[0]), int(row[1]), int(row[2])) for row in rows)

    async def credit_events(self) -> list[tuple[str, str, str, int]]:
        """(id, from_tenant, to_tenant, amount_micros) of every credit event (FINAL)."""
        rows = await self.table("credit_events", "id, from_tenant, to_tenant, amount_micros")
        return sorted((str(r[0]), str(r[1]), str(r[2]), int(r[3])) for r in rows)

    async def event_ids(self) -> set[str]:
        """The ids of the usage events, as the platform counts them (FINAL)."""
        return {row[0] for row in await self.events()}

    async def insert_events(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert (id, tenant_id, user_id, kind, quantity, cost_micros, occurred_at,
        version) rows directly, behind the platform's back (orphans, for 001#63)."""
        await asyncio.to_thread(
            self._client.execute,
            "INSERT INTO usage_events (id, tenant_id, user_id, kind, quantity, cost_micros, "
            "occurred_at, version) VALUES",
            list(rows),
        )

    def close(self) -> None:
        """Drop the connection."""
        self._client.disconnect()
