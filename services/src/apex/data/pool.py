"""PostgreSQL connection pools.

:func:`create_pool` opens a plain asyncpg pool (apex.auth's). :class:`DatabasePool` is
apex.data's: bounded (``APEX_DB_POOL_SIZE``), a request waits at most
``APEX_DB_POOL_TIMEOUT`` for a connection and then gets :class:`PoolExhausted`, every
connection has PostgreSQL's ``statement_timeout`` and runs as ``apex_data``; it counts
connections in use, idle and waiting, and the time each request waited.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import asyncpg

from apex.data.metrics import Metrics
from apex.data.tenancy import SERVICE_ROLE

__all__ = ["DatabasePool", "PoolExhausted", "PoolStats", "create_pool"]

log = logging.getLogger(__name__)

# A query that takes longer than this is a bug or an outage, not a slow request:
# fail it so the caller gets an answer (503) instead of a hung connection.
COMMAND_TIMEOUT_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 10.0
APPLICATION_NAME: Final = "apex-data"
# asyncpg's own client-side timeout is only the last resort behind PostgreSQL's
# statement_timeout (which cancels on the server and leaves the connection usable).
_CLIENT_TIMEOUT_MARGIN: Final = 5.0


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """Open an asyncpg pool on ``dsn`` (``postgresql://user:pw@host:port/db``)."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=CONNECT_TIMEOUT_SECONDS,
        command_timeout=COMMAND_TIMEOUT_SECONDS,
        server_settings={"application_name": "apex"},
    )
    if pool is None:  # pragma: no cover - asyncpg types the awaited pool as optional
        raise RuntimeError("asyncpg.create_pool returned no pool")
    return pool


class PoolExhausted(Exception):
    """No connection of the pool came free within the pool timeout."""

    def __init__(self, pool: str, timeout: float) -> None:
        super().__init__(f"no {pool} connection free within {timeout:g} s")
        self.pool = pool
        self.timeout = timeout


@dataclasses.dataclass(frozen=True)
class PoolStats:
    """One pool's counts: its bound, connections lent out, idle ones open, requests queued."""

    name: str
    size: int
    in_use: int
    idle: int
    waiting: int
    # host:port of the server the newest connection reached (None before the first).
    server: str | None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class DatabasePool:
    """A bounded pool of connections to one PostgreSQL server (the primary or the replica).

    The bound is a semaphore in front of asyncpg's pool: waiting for a free connection
    (bounded by ``timeout``: :class:`PoolExhausted`) is then told apart from connecting
    to a server that is down or cut off (asyncpg's connect errors, which callers retry).
    Connections open lazily, so the service starts while PostgreSQL is down.
    """

    def __init__(
        self,
        name: str,
        dsn: str,
        *,
        size: int,
        timeout: float,
        statement_timeout: float,
        connect_timeout: float,
        metrics: Metrics,
    ) -> None:
        self.name = name
        self.size = size
        self.timeout = timeout
        self._dsn = dsn
        self._statement_timeout = statement_timeout
        self._connect_timeout = connect_timeout
        self._metrics = metrics
        self._slots = asyncio.Semaphore(size)
        self._pool: asyncpg.Pool | None = None
        self._in_use = 0
        self._waiting = 0
        self._server: str | None = None

    async def open(self) -> None:
        """Create the pool (no connection yet: the first request opens one)."""
        pool = await asyncpg.create_pool(
            self._dsn,
            min_size=0,
            max_size=self.size,
            timeout=self._connect_timeout,
            command_timeout=self._statement_timeout + _CLIENT_TIMEOUT_MARGIN,
            server_settings={
                "application_name": APPLICATION_NAME,
                "statement_timeout": str(max(1, round(self._statement_timeout * 1000))),
            },
            setup=_run_as_service_role,
            init=self._on_connect,
        )
        if pool is None:  # pragma: no cover - asyncpg types the awaited pool as optional
            raise RuntimeError("asyncpg.create_pool returned no pool")
        self._pool = pool

    async def close(self) -> None:
        """Close every connection (waiting at most the connect timeout for lent ones)."""
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), self._connect_timeout)
            except TimeoutError:
                self._pool.terminate()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the pool; PoolExhausted after waiting ``timeout`` for one.

        The connection goes back to the pool however the block ends (error, cancellation):
        asyncpg rolls back what it left open and resets its session."""
        if self._pool is None:
            raise RuntimeError(f"the {self.name} pool is not open")
        started = time.monotonic()
        self._waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), self.timeout)
        except TimeoutError:
            raise PoolExhausted(self.name, self.timeout) from None
        finally:
            self._waiting -= 1
            self._metrics.pool_wait.labels(self.name).observe(time.monotonic() - started)
        self._in_use += 1
        try:
            async with self._pool.acquire(timeout=self._connect_timeout) as conn:
                yield conn
        finally:
            self._in_use -= 1
            self._slots.release()

    def stats(self) -> PoolStats:
        """The pool's counts now (also published as apex_data_pool_connections)."""
        idle = self._pool.get_idle_size() if self._pool is not None else 0
        stats = PoolStats(self.name, self.size, self._in_use, idle, self._waiting, self._server)
        for state in ("in_use", "idle", "waiting"):
            self._metrics.pool_connections.labels(self.name, state).set(getattr(stats, state))
        return stats

    async def _on_connect(self, conn: asyncpg.Connection) -> None:
        """A new connection: which server it reached. For a multi-host DSN, a different
        server than before is a failover: logged and counted."""
        server = await conn.fetchval(
            "SELECT coalesce(host(inet_server_addr()), 'local') || ':' || "
            "coalesce(inet_server_port(), 0)"
        )
        if self._server is not None and server != self._server and self.name == "primary":
            self._metrics.failovers.inc()
            log.warning("failover: the primary is now %s (was %s)", server, self._server)
        self._server = server


async def _run_as_service_role(conn: asyncpg.Connection) -> None:
    # On every acquire: asyncpg's reset on release (RESET ALL) puts the login role back.
    await conn.execute(f"SET ROLE {SERVICE_ROLE}")
