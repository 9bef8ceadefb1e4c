"""The domain: usage records (what agent runs consume) and their summaries.

Every query runs in :func:`apex.data.tenancy.tenant_transaction`. A record and its
outbox row (topic ``usage``, the payload the relay copies to ClickHouse) commit in one
transaction; the same idempotency key again returns the first record and writes nothing.
A batch is copied (COPY) into a temporary table, then inserted with ``ON CONFLICT DO
NOTHING`` and its outbox rows, in one transaction. A record's ``labels`` (a JSON object of
strings, migration 0019: apex.agents' agent, model, provider and run) travel with it to
ClickHouse.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final

import asyncpg

from apex.data.tenancy import tenant_transaction

__all__ = [
    "OUTBOX_CHANNEL",
    "TOPIC",
    "NewRecord",
    "Summary",
    "current_lsn",
    "insert_batch",
    "insert_record",
    "plans",
    "record_json",
    "summary",
]

# The outbox topic of usage records, and the channel a commit NOTIFYs the relay on.
TOPIC: Final = "usage"
OUTBOX_CHANNEL: Final = "apex_outbox"
# The columns of a record, in the order COPY sends them.
_COLUMNS: Final = (
    "id",
    "tenant_id",
    "user_id",
    "kind",
    "quantity",
    "cost_micros",
    "idempotency_key",
    "occurred_at",
    "labels",
)
_SELECT_BY_KEY: Final = """
SELECT id, tenant_id, user_id, kind, quantity, cost_micros, idempotency_key, occurred_at,
    labels
FROM usage_records WHERE tenant_id = $1 AND idempotency_key = $2
"""
# The record and its outbox row (the payload the relay copies to ClickHouse), in one
# statement; no row when the idempotency key is taken.
_INSERT_ONE: Final = """
WITH ins AS (
    INSERT INTO usage_records
        (id, tenant_id, user_id, kind, quantity, cost_micros, idempotency_key, occurred_at,
        labels)
    VALUES ($1, $2, $3, $4, $5, $6, $7, COALESCE($8, now()), $9::jsonb)
    ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
    RETURNING *
), outbox_rows AS (
    INSERT INTO outbox (topic, payload)
    SELECT 'usage', jsonb_build_object(
        'id', id, 'tenant_id', tenant_id, 'user_id', user_id, 'kind', kind,
        'quantity', quantity, 'cost_micros', cost_micros, 'occurred_at', occurred_at,
        'labels', labels)
    FROM ins
)
SELECT id, tenant_id, user_id, kind, quantity, cost_micros, idempotency_key, occurred_at, labels
FROM ins
"""
_SUMMARY: Final = """
SELECT kind, sum(quantity)::bigint AS quantity, sum(cost_micros)::bigint AS cost_micros
FROM usage_records
WHERE tenant_id = $1 AND occurred_at >= $2 AND occurred_at < $3
GROUP BY kind ORDER BY kind
"""
_BATCH_TABLE: Final = """
CREATE TEMPORARY TABLE usage_batch (
    id uuid, tenant_id uuid, user_id uuid, kind text, quantity bigint,
    cost_micros bigint, idempotency_key text, occurred_at timestamptz, labels jsonb
) ON COMMIT DROP
"""
_INSERT_BATCH: Final = """
WITH ins AS (
    INSERT INTO usage_records
        (id, tenant_id, user_id, kind, quantity, cost_micros, idempotency_key, occurred_at,
        labels)
    SELECT id, tenant_id, user_id, kind, quantity, cost_micros, idempotency_key,
        -- a record without occurred_at: the transaction's time (no round trip to ask it)
        COALESCE(occurred_at, now()), labels
    FROM usage_batch
    ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
    RETURNING *
), outbox_rows AS (
    INSERT INTO outbox (topic, payload)
    SELECT 'usage', jsonb_build_object(
        'id', id, 'tenant_id', tenant_id, 'user_id', user_id, 'kind', kind,
        'quantity', quantity, 'cost_micros', cost_micros, 'occurred_at', occurred_at,
        'labels', labels)
    FROM ins
)
SELECT count(*) FROM ins
"""


@dataclasses.dataclass(frozen=True)
class NewRecord:
    """A usage record as a client sends it (validated by the route)."""

    user_id: uuid.UUID
    kind: str
    quantity: int
    cost_micros: int
    idempotency_key: str
    occurred_at: datetime.datetime | None = None
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def labels_json(self) -> str:
        """The labels as the JSON text stored in ``usage_records.labels``."""
        return json.dumps(dict(self.labels), sort_keys=True)


@dataclasses.dataclass(frozen=True)
class Summary:
    """Totals per kind of one tenant's records in a time range."""

    tenant_id: uuid.UUID
    by_kind: dict[str, dict[str, int]]

    def to_json(self) -> dict[str, Any]:
        return {"tenant_id": str(self.tenant_id), "by_kind": self.by_kind}


def record_json(row: asyncpg.Record) -> dict[str, Any]:
    """A stored record as the API returns it."""
    return {
        "id": str(row["id"]),
        "tenant_id": str(row["tenant_id"]),
        "user_id": str(row["user_id"]),
        "kind": row["kind"],
        "quantity": row["quantity"],
        "cost_micros": row["cost_micros"],
        "idempotency_key": row["idempotency_key"],
        "occurred_at": row["occurred_at"].isoformat(),
        "labels": json.loads(row["labels"]),
    }


async def insert_record(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, record: NewRecord
) -> tuple[dict[str, Any], bool]:
    """Store ``record`` for ``tenant_id`` with its outbox row: (the record, True), or the
    record stored earlier under the same idempotency key and False."""
    async with tenant_transaction(conn, tenant_id):
        row = await conn.fetchrow(
            _INSERT_ONE,
            uuid.uuid4(),
            tenant_id,
            record.user_id,
            record.kind,
            record.quantity,
            record.cost_micros,
            record.idempotency_key,
            record.occurred_at,
            record.labels_json(),
        )
        if row is not None:
            await conn.execute("SELECT pg_notify($1, '')", OUTBOX_CHANNEL)
            return record_json(row), True
        first = await conn.fetchrow(
            _SELECT_BY_KEY,
            tenant_id,
            record.idempotency_key,
        )
    if first is None:  # pragma: no cover - the conflicting row exists (unique constraint)
        raise RuntimeError("idempotency conflict without the conflicting record")
    return record_json(first), False


async def insert_batch(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, records: Sequence[NewRecord]
) -> int:
    """Store ``records`` for ``tenant_id`` (COPY, then one INSERT ... ON CONFLICT DO
    NOTHING with their outbox rows): how many were new."""
    async with tenant_transaction(conn, tenant_id):
        await conn.execute(_BATCH_TABLE)
        await conn.copy_records_to_table(
            "usage_batch",
            columns=_COLUMNS,
            records=[
                (
                    uuid.uuid4(),
                    tenant_id,
                    r.user_id,
                    r.kind,
                    r.quantity,
                    r.cost_micros,
                    r.idempotency_key,
                    r.occurred_at,
                    r.labels_json(),
                )
                for r in records
            ],
        )
        inserted: int = await conn.fetchval(_INSERT_BATCH)
        if inserted:
            await conn.execute("SELECT pg_notify($1, '')", OUTBOX_CHANNEL)
    return inserted


async def summary(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    since: datetime.datetime,
    until: datetime.datetime,
) -> Summary:
    """Totals per kind of ``tenant_id``'s records with since <= occurred_at < until."""
    async with tenant_transaction(conn, tenant_id):
        rows = await conn.fetch(_SUMMARY, tenant_id, since, until)
    return Summary(
        tenant_id,
        {r["kind"]: {"quantity": r["quantity"], "cost_micros": r["cost_micros"]} for r in rows},
    )


async def plans(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    since: datetime.datetime,
    until: datetime.datetime,
) -> dict[str, Any]:
    """PostgreSQL's plans (``EXPLAIN (FORMAT JSON)``) of the queries that must use an index:
    the summary and the idempotency-key lookup, as ``tenant_id`` runs them."""
    async with tenant_transaction(conn, tenant_id):
        summary_plan = await conn.fetchval(
            f"EXPLAIN (FORMAT JSON) {_SUMMARY}", tenant_id, since, until
        )
        key_plan = await conn.fetchval(
            f"EXPLAIN (FORMAT JSON) {_SELECT_BY_KEY}", tenant_id, "any-key"
        )
    return {"summary": json.loads(summary_plan), "idempotency": json.loads(key_plan)}


async def current_lsn(conn: asyncpg.Connection) -> str:
    """A WAL position at or past the end of the commit that just ran on ``conn``.

    The insert position, not ``pg_current_wal_lsn()`` (the write position): with
    ``synchronous_commit=off`` a commit returns before its record is written out, and a
    replica that replayed up to the write position would not have it yet."""
    lsn: str = await conn.fetchval("SELECT pg_current_wal_insert_lsn()::text")
    return lsn
