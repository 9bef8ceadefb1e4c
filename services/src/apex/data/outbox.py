"""The transactional outbox and its relay to ClickHouse.

A business write and its outbox row commit in one PostgreSQL transaction
(:func:`enqueue`), so ClickHouse hears of exactly the committed writes: a rolled-back
transaction leaves no outbox row, and its NOTIFY (delivered only at commit) never fires.

:class:`Relay` copies unrelayed rows to ClickHouse in batches. One pass locks a batch
(``FOR UPDATE SKIP LOCKED``: two relays at once never send the same row at the same
time), inserts it into ClickHouse, then sets ``relayed_at`` in the same transaction. A
crash between the ClickHouse insert and that commit releases the locks and the next pass
sends the rows again; the ClickHouse tables are ``ReplacingMergeTree(version)`` keyed by
the record's id and every query reads them with ``FINAL``, so a row sent twice counts
once. The ClickHouse SQL is in :mod:`apex.data.clickhouse_sql` (18.16 and current releases).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Final

import asyncpg

from apex.common.tasks import wait_event
from apex.data.cache import Cache
from apex.data.clickhouse import ClickHouse, ClickHouseError
from apex.data.clickhouse_sql import (
    ADD_LABEL_COLUMNS,
    CREATE_TABLES,
    INSERT_COLUMNS,
    LABEL_COLUMNS,
)
from apex.data.pool import PoolExhausted

__all__ = [
    "CREDIT_TOPIC",
    "NOTIFY_CHANNEL",
    "RELAY_PAUSE_LOCK",
    "USAGE_TOPIC",
    "CacheUnavailable",
    "Relay",
    "RelayPass",
    "enqueue",
    "ensure_clickhouse_schema",
    "pending_count",
]

log = logging.getLogger("apex.data.outbox")

USAGE_TOPIC: Final = "usage"
# apex.data.transfer writes these ({"id", "from_tenant", "to_tenant", "amount_micros",
# "created_at"}).
CREDIT_TOPIC: Final = "credit_transfer"
NOTIFY_CHANNEL: Final = "apex_outbox"
# A relay batch holds this PostgreSQL advisory lock shared for its transaction; a backup
# (apex.data.backup) takes it exclusively while it snapshots both stores, so no batch is
# half done (in ClickHouse, not yet acknowledged) at that moment.
RELAY_PAUSE_LOCK: Final = 0x61706578_72656C79  # "apexrely"


@dataclasses.dataclass(frozen=True)
class _Route:
    """Where the rows of one topic go in ClickHouse, and how a payload becomes a row."""

    table: str
    columns: tuple[str, ...]
    row: Callable[[Mapping[str, Any], int], tuple[Any, ...]]
    # The payload fields naming tenants whose cached summaries the event changes.
    tenants: tuple[str, ...]


def _usage_row(payload: Mapping[str, Any], version: int) -> tuple[Any, ...]:
    # A payload written before migration 0019 has no labels.
    labels = sorted(dict(payload.get("labels") or {}).items())
    return (
        uuid.UUID(payload["id"]),
        uuid.UUID(payload["tenant_id"]),
        uuid.UUID(payload["user_id"]),
        str(payload["kind"]),
        int(payload["quantity"]),
        int(payload["cost_micros"]),
        _clickhouse_time(payload["occurred_at"]),
        version,
        [str(key) for key, _ in labels],
        [str(value) for _, value in labels],
    )


def _credit_row(payload: Mapping[str, Any], version: int) -> tuple[Any, ...]:
    return (
        uuid.UUID(payload["id"]),
        uuid.UUID(payload["from_tenant"]),
        uuid.UUID(payload["to_tenant"]),
        int(payload["amount_micros"]),
        _clickhouse_time(payload["created_at"]),
        version,
    )


_ROUTES: Final[Mapping[str, _Route]] = {
    USAGE_TOPIC: _Route(
        "usage_events",
        INSERT_COLUMNS["usage_events"],
        _usage_row,
        ("tenant_id",),
    ),
    CREDIT_TOPIC: _Route(
        "credit_events",
        INSERT_COLUMNS["credit_events"],
        _credit_row,
        ("from_tenant", "to_tenant"),
    ),
}


def _clickhouse_time(value: str) -> dt.datetime:
    """An ISO 8601 instant as an aware UTC datetime, whole seconds (ClickHouse's DateTime).

    Aware, so the driver stores the instant itself whatever the server's time zone; a
    naive value (none is written by the platform) is taken as UTC."""
    moment = dt.datetime.fromisoformat(value)
    moment = moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
    return moment.replace(microsecond=0)


def _json_value(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


async def enqueue(conn: asyncpg.Connection, topic: str, payload: Mapping[str, Any]) -> None:
    """Write one outbox row on ``conn``, inside the caller's transaction.

    ``payload`` holds the event's fields (UUIDs and datetimes are stored as strings); the
    topics and their fields are those of ``apex.data.clickhouse_sql.CREATE_TABLES``. The
    NOTIFY that wakes the relay is delivered only if the transaction commits.
    """
    if topic not in _ROUTES:
        raise ValueError(f"unknown outbox topic {topic!r}; known: {sorted(_ROUTES)}")
    if not conn.is_in_transaction():
        # Outside a transaction the row would commit on its own, apart from the business
        # row it announces: exactly what an outbox exists to prevent.
        raise RuntimeError("enqueue must run inside the business write's transaction")
    body = json.dumps({key: _json_value(value) for key, value in payload.items()})
    # No RETURNING: the tenant role may insert outbox rows but not read them.
    await conn.execute("INSERT INTO outbox (topic, payload) VALUES ($1, $2::jsonb)", topic, body)
    await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)


async def ensure_clickhouse_schema(clickhouse: ClickHouse) -> None:
    """Create the relay's ClickHouse tables where missing, and add the label columns to a
    ``usage_events`` made before them."""
    for ddl in CREATE_TABLES.values():
        await clickhouse.execute(ddl)
    if not await clickhouse.execute(LABEL_COLUMNS):
        await clickhouse.execute(ADD_LABEL_COLUMNS)


# Lends a connection for one block (apex.data's pool: ``DatabasePool.connection``).
Connect = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]


async def pending_count(conn: asyncpg.Connection) -> int:
    """Outbox rows not relayed yet (the relay's lag, in rows)."""
    return int(await conn.fetchval("SELECT count(*) FROM outbox WHERE relayed_at IS NULL"))


class CacheUnavailable(RuntimeError):
    """Some cache invalidations could not reach every node; they stay pending."""


# What a store that is down or cut raises; the relay reports these and tries again later.
_STORE_ERRORS: Final = (
    CacheUnavailable,
    ClickHouseError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
    PoolExhausted,
)


@dataclasses.dataclass(frozen=True)
class RelayPass:
    """What one relay pass (or a run of passes) did."""

    relayed: int = 0
    invalidated: int = 0
    batches: int = 0
    pending: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The pass as JSON: ``{"relayed", "invalidated", "batches", "pending", "error"}``:
        rows copied to ClickHouse, cache invalidations applied, batches, rows left."""
        return dataclasses.asdict(self)


class Relay:
    """Copies committed outbox rows to ClickHouse, at least once, counted once."""

    def __init__(
        self,
        connect: Connect,
        clickhouse: ClickHouse,
        *,
        batch: int = 500,
        poll: float = 0.5,
        listen_dsn: str | None = None,
        cache: Cache | None = None,
        on_relayed: Callable[[int], None] | None = None,
        on_pending: Callable[[int], None] | None = None,
    ) -> None:
        if batch < 1:
            raise ValueError(f"batch must be at least 1 row, got {batch}")
        if poll <= 0:
            raise ValueError(f"poll must be a positive number of seconds, got {poll}")
        self._connect = connect
        self._clickhouse = clickhouse
        self._batch = batch
        self._poll = poll
        self._listen_dsn = listen_dsn
        self._cache = cache
        self._on_relayed = on_relayed
        self._on_pending = on_pending
        self._wake = asyncio.Event()
        self._schema_ready = False

    async def relay_batch(self) -> int:
        """Relay at most one batch; return how many rows it sent (0: nothing pending).

        Raises ClickHouseError or a PostgreSQL error when a store fails; then nothing of
        the batch is marked relayed and the next pass sends it again.
        """
        if not self._schema_ready:
            await ensure_clickhouse_schema(self._clickhouse)
            self._schema_ready = True
        if self._cache is not None:
            await self._queue_invalidations()
        async with self._connect() as conn, conn.transaction():
            # Waits while a backup snapshots the stores (a fraction of a second).
            await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", RELAY_PAUSE_LOCK)
            rows = await conn.fetch(
                "SELECT id, topic, payload FROM outbox WHERE relayed_at IS NULL "
                "AND topic = ANY($2::text[]) ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                self._batch,
                # Only topics it knows: a row of another topic stays pending (and counted
                # in the lag) instead of failing every batch after it.
                list(_ROUTES),
            )
            if not rows:
                return 0
            await self._send(rows)
            # If the process dies here, the insert above is in ClickHouse and these rows are
            # still pending: the next pass sends them again and FINAL counts them once.
            await conn.execute(
                "UPDATE outbox SET relayed_at = now() WHERE id = ANY($1::bigint[])",
                [row["id"] for row in rows],
            )
        if self._on_relayed is not None:
            self._on_relayed(len(rows))
        return len(rows)

    async def _queue_invalidations(self) -> None:
        """Queue the tenants of the next batch for cache invalidation, in a transaction of
        its own before the batch's: their writes are committed already, so an early
        invalidation is as good as a late one, and no relay transaction ever holds locks
        on two tables (a reset or another writer deleting across tables cannot deadlock
        with it). Redis being down never holds the ClickHouse copy back."""
        async with self._connect() as conn:
            rows = await conn.fetch(
                "SELECT topic, payload FROM outbox WHERE relayed_at IS NULL "
                "AND topic = ANY($2::text[]) ORDER BY id LIMIT $1",
                self._batch,
                list(_ROUTES),
            )
            tenants = sorted(
                {
                    str(json.loads(row["payload"])[field])
                    for row in rows
                    for field in _ROUTES[row["topic"]].tenants
                }
            )
            if tenants:
                # DO UPDATE waits for an invalidation pass that holds the tenant's row, so
                # an invalidation queued meanwhile is never lost.
                await conn.execute(
                    "INSERT INTO cache_invalidations (tenant_id) SELECT unnest($1::uuid[]) "
                    "ON CONFLICT (tenant_id) DO UPDATE SET queued_at = now()",
                    tenants,
                )

    async def invalidate_batch(self) -> int:
        """Apply at most one batch of queued cache invalidations; return how many went.

        A tenant leaves ``cache_invalidations`` only once every cache node took the bump;
        the others stay queued (a node is down) and raise CacheUnavailable after the
        rest is committed. Without a cache, nothing."""
        if self._cache is None:
            return 0
        async with self._connect() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT tenant_id FROM cache_invalidations ORDER BY queued_at "
                "LIMIT $1 FOR UPDATE SKIP LOCKED",
                self._batch,
            )
            done = [
                row["tenant_id"]
                for row in rows
                if await self._cache.invalidate(str(row["tenant_id"])) == len(self._cache.urls)
            ]
            if done:
                await conn.execute(
                    "DELETE FROM cache_invalidations WHERE tenant_id = ANY($1::uuid[])", done
                )
        if len(done) < len(rows):
            raise CacheUnavailable(
                f"{len(rows) - len(done)} cache invalidations wait for a cache node that is down"
            )
        return len(done)

    async def _drain(self, done: list[int] | None = None) -> None:
        """Relay, then invalidate, until nothing more goes; ``done`` (rows relayed,
        invalidations applied, batches) counts what went, also when a store fails."""
        counts = done if done is not None else [0, 0, 0]
        failures: list[Exception] = []
        # Each step on its own: ClickHouse being down must not hold cache invalidations
        # back, nor the other way round.
        for index, step in enumerate((self.relay_batch, self.invalidate_batch)):
            try:
                while sent := await step():
                    counts[index] += sent
                    counts[2] += 1
            except _STORE_ERRORS as exc:
                failures.append(exc)
        if failures:
            raise failures[0]

    async def run_once(self) -> RelayPass:
        """Relay batches until nothing is pending or a store fails; say what happened."""
        done = [0, 0, 0]
        error: str | None = None
        try:
            await self._drain(done)
        except _STORE_ERRORS as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.warning("outbox relay pass failed after %d rows: %s", done[0], error)
        pending = await self.pending()
        relayed, invalidated, batches = done
        return RelayPass(relayed, invalidated, batches, pending, error)

    async def pending(self) -> int:
        """Outbox rows not relayed yet (also told to ``on_pending``)."""
        async with self._connect() as conn:
            count = await pending_count(conn)
        if self._on_pending is not None:
            self._on_pending(count)
        return count

    async def run_forever(self) -> None:
        """Relay until cancelled: at once after each NOTIFY on the outbox channel, else
        every ``poll`` seconds. A failing store is retried at the next poll."""
        listener: asyncpg.Connection | None = None
        try:
            while True:
                if listener is None or listener.is_closed():
                    listener = await self._listen()
                self._wake.clear()
                try:
                    await self._drain()
                    await self.pending()
                except _STORE_ERRORS as exc:
                    log.warning("outbox relay pass failed, retrying: %s", exc)
                except Exception:
                    # A background loop that dies is a relay that silently stops: log it
                    # and keep going.
                    log.exception("outbox relay pass failed unexpectedly")
                await wait_event(self._wake, self._poll)
        finally:
            if listener is not None and not listener.is_closed():
                # terminate, not close: a relay that is told to stop must not wait on a
                # server's goodbye (the app's shutdown is bounded).
                listener.terminate()

    async def _listen(self) -> asyncpg.Connection | None:
        """A connection of its own LISTENing on the outbox channel (not a pooled one: it
        is held for as long as the relay runs), or None: polling alone still relays."""
        if self._listen_dsn is None:
            return None
        try:
            conn = await asyncpg.connect(self._listen_dsn, timeout=self._poll + 5.0)
            await conn.add_listener(NOTIFY_CHANNEL, self._notified)
        except _STORE_ERRORS:
            return None
        return conn

    def _notified(self, *_args: object) -> None:
        self._wake.set()

    async def _send(self, rows: Sequence[asyncpg.Record]) -> None:
        """Insert ``rows`` into their ClickHouse tables."""
        by_topic: dict[str, list[tuple[Any, ...]]] = {}
        for row in rows:
            route = _ROUTES[row["topic"]]
            payload = json.loads(row["payload"])
            by_topic.setdefault(row["topic"], []).append(route.row(payload, row["id"]))
        for topic, values in by_topic.items():
            route = _ROUTES[topic]
            await self._clickhouse.insert(route.table, values, route.columns)
