"""Direct access to apex.data's stores, for the tests that prove state (L2/L3 only: a
deployment's stores are not the tests' to read).

Public: `write_usage` (a usage record and its outbox row, written the way the service
writes them: one transaction, as the tenant role, in the payload shape of
contract-data.md), `lock_waiters` (backends waiting for a lock on a table),
`ClickHouseReader` (usage events read with FINAL, as the platform reads them, and raw).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg
from clickhouse_driver import Client

__all__ = ["ClickHouseReader", "lock_waiters", "write_usage"]


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


async def lock_waiters(conn: asyncpg.Connection, table: str) -> list[int]:
    """PIDs of the backends (other than `conn`'s) waiting for a lock on `table`."""
    rows = await conn.fetch(
        "SELECT DISTINCT l.pid FROM pg_locks l WHERE NOT l.granted "
        "AND l.relation = $1::regclass AND l.pid <> pg_backend_pid()",
        table,
    )
    return [row["pid"] for row in rows]


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
        """Rows of `sql`; [] when the table does not exist yet (nothing relayed so far)."""
        return await asyncio.to_thread(self._execute, sql, params)

    def _execute(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        tables = self._client.execute(
            "SELECT name FROM system.tables WHERE database = currentDatabase()"
        )
        if ("usage_events",) not in tables and "usage_events" in sql:
            return []
        return list(self._client.execute(sql, params))

    async def events(self, *, final: bool = True) -> list[tuple[str, int, int]]:
        """(id, quantity, cost_micros) of every usage event (FINAL: each id once)."""
        sql = "SELECT id, quantity, cost_micros FROM usage_events"
        rows = await self.execute(f"{sql} FINAL" if final else sql)
        return sorted((str(row[0]), int(row[1]), int(row[2])) for row in rows)

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
