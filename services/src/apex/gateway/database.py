"""The gateway's PostgreSQL: one pool, opened on first use, every call through a breaker.

The gateway starts without PostgreSQL (min_size 0, the pool is created lazily); every call
goes through the ``postgres`` circuit breaker and a timeout, so a hung or dead database
gives a quick error, never a stuck connection. What it reads and writes:
:mod:`apex.gateway.notes` (its own tables) and :mod:`apex.gateway.directory` (the
platform's users).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import asyncpg

from apex.data.pool import create_pool
from apex.gateway.breaker import Breaker

__all__ = ["DB_FAILURES", "Database", "DatabaseError"]

T = TypeVar("T")

TIMEOUT_SECONDS: Final = 5.0
POOL_SIZE: Final = 5
# Failures that say the database is unhealthy (they count against the breaker).
DB_FAILURES: Final = (asyncpg.PostgresError, OSError, TimeoutError, asyncpg.InterfaceError)


class DatabaseError(Exception):
    """A database call failed (or there is no database); the message says how."""


class Database:
    """The pool of APEX_DATABASE_URL (None: every call fails with DatabaseError)."""

    def __init__(self, database_url: str | None, breaker: Breaker) -> None:
        self._database_url = database_url
        self.breaker = breaker
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def _get_pool(self, database_url: str) -> asyncpg.Pool:
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await create_pool(database_url, min_size=0, max_size=POOL_SIZE)
            return self._pool

    async def call(self, fn: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
        """``await fn(pool)`` through the breaker, within the timeout; DatabaseError when
        it fails, CircuitOpen (untried) while the breaker is open."""
        database_url = self._database_url
        if database_url is None:
            raise DatabaseError("APEX_DATABASE_URL is not set")

        async def attempt() -> T:
            async with asyncio.timeout(TIMEOUT_SECONDS):
                return await fn(await self._get_pool(database_url))

        try:
            return await self.breaker.call(attempt, failures=DB_FAILURES)
        except DB_FAILURES as exc:
            raise DatabaseError(f"database error: {type(exc).__name__}") from None
