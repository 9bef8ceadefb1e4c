"""Where a query goes: the primary, or the streaming read replica.

Writes and reads that must see them go to the primary. A read that may be stale goes to
the replica while it is usable: measured every ``APEX_REPLICA_LAG_CHECK`` seconds (the
primary's ``pg_current_wal_lsn()`` against the replica's ``pg_last_wal_replay_lsn()``,
compared with ``pg_wal_lsn_diff``), it is ``ok`` when at most
``APEX_REPLICA_MAX_LAG_BYTES`` behind, ``lagging`` beyond, ``down`` when unreachable (or
not a standby), ``absent`` when none is configured; only ``ok`` serves. A read carrying
a minimum LSN (``X-Apex-Min-LSN``, from a write's ``X-Apex-LSN``) is served by the replica
only once it has replayed that LSN, else by the primary: read-your-writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from typing import Final, Literal

import asyncpg

from apex.data.metrics import Metrics
from apex.data.pool import DatabasePool, PoolExhausted
from apex.data.retry import CONNECTION_ERRORS

__all__ = ["LSN", "ReplicaState", "Router", "Source", "parse_lsn"]

log = logging.getLogger(__name__)

ReplicaState = Literal["ok", "lagging", "down", "absent"]
Source = Literal["replica", "primary"]
# PostgreSQL's text form of a WAL position: two hex numbers, "16/B374D848".
LSN: Final = re.compile(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}")


def parse_lsn(text: str) -> str:
    """``text`` if it is a WAL position (``16/B374D848``); ValueError otherwise."""
    if not LSN.fullmatch(text):
        raise ValueError("must be a PostgreSQL LSN such as 16/B374D848")
    return text.upper()


class Router:
    """The primary's pool, the replica's (if any), and what is known of the replica's lag."""

    def __init__(
        self,
        primary: DatabasePool,
        replica: DatabasePool | None,
        *,
        max_lag_bytes: int,
        lag_check: float,
        metrics: Metrics,
    ) -> None:
        self.primary = primary
        self.replica = replica
        self._max_lag = max_lag_bytes
        self._lag_check = lag_check
        self._metrics = metrics
        self.state: ReplicaState = "absent" if replica is None else "down"
        self.lag_bytes: int | None = None
        # Why the replica is down (the last measurement's error), for /admin/pools.
        self.error: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Measure the replica once, then every lag_check seconds in the background."""
        if self.replica is None:
            return
        await self.measure()
        self._task = asyncio.create_task(self._measure_forever(), name="apex.data replica lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def measure(self) -> ReplicaState:
        """Measure the replica's lag now; the new state."""
        if self.replica is None:
            return self.state
        try:
            async with self.replica.connection() as conn:
                replayed = await conn.fetchval("SELECT pg_last_wal_replay_lsn()::text")
            if replayed is None:
                raise LookupError("the replica is not a standby (pg_last_wal_replay_lsn is NULL)")
            async with self.primary.connection() as conn:
                lag = await conn.fetchval(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::bigint",
                    replayed,
                )
        except (*CONNECTION_ERRORS, asyncpg.PostgresError, PoolExhausted, LookupError) as exc:
            self._set("down", None, exc)
            return self.state
        lag = max(0, int(lag))
        self._set("ok" if lag <= self._max_lag else "lagging", lag, None)
        return self.state

    def _set(self, state: ReplicaState, lag: int | None, why: BaseException | None) -> None:
        if state != self.state:
            log.warning(
                "replica %s -> %s (lag %s bytes%s)",
                self.state,
                state,
                lag,
                f": {type(why).__name__}: {why}" if why else "",
            )
        self.state = state
        self.lag_bytes = lag
        self.error = f"{type(why).__name__}: {why}" if why else None
        self._metrics.replica_lag.set(-1 if lag is None else lag)

    async def _measure_forever(self) -> None:
        while True:
            await asyncio.sleep(self._lag_check)
            await self.measure()

    @contextlib.asynccontextmanager
    async def reader(
        self, min_lsn: str | None = None
    ) -> AsyncIterator[tuple[asyncpg.Connection, Source]]:
        """A connection for a read that may be stale (but not older than ``min_lsn``), and
        where it goes: the replica while it is ok and has replayed ``min_lsn``, else the
        primary."""
        async with contextlib.AsyncExitStack() as stack:
            conn = await self._replica_connection(stack, min_lsn)
            source: Source = "replica"
            if conn is None:
                conn = await stack.enter_async_context(self.primary.connection())
                source = "primary"
            self._metrics.reads.labels(source).inc()
            yield conn, source

    async def _replica_connection(
        self, stack: contextlib.AsyncExitStack, min_lsn: str | None
    ) -> asyncpg.Connection | None:
        """A replica connection fit for the read, or None (the primary serves it)."""
        if self.replica is None or self.state != "ok":
            return None
        try:
            conn: asyncpg.Connection = await stack.enter_async_context(self.replica.connection())
            if min_lsn is not None and not await conn.fetchval(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", min_lsn
            ):
                await stack.aclose()
                return None
        except PoolExhausted:
            # Busy, not broken: this read goes to the primary, the replica stays ok.
            await stack.aclose()
            return None
        except CONNECTION_ERRORS as exc:
            await stack.aclose()
            # Unreachable now: bypass it until the next measurement finds it back.
            self._set("down", None, exc)
            return None
        return conn
