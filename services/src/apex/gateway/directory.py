"""Who may be addressed: the platform's users and their tenants, read from ``users``.

A message to ``user:<id>`` is logged only for a user that exists and belongs to the
sender's tenant (users without a tenant form one space of their own): the gateway reads
``users.tenant_id`` (the table apex.auth owns, in the same database) through
:class:`apex.gateway.database.Database`. Found users are remembered for a short while (a
busy conversation does not query once per message); users not found are not, so a new
user is reachable at once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Final

import asyncpg

from apex.gateway.database import Database

__all__ = ["UserDirectory"]

CACHE_SECONDS: Final = 30.0
CACHE_SIZE: Final = 10_000


class UserDirectory:
    """The tenant of each user id, from the users table, cached for CACHE_SECONDS."""

    def __init__(self, database: Database, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._db = database
        self._clock = clock
        # user id -> (when the entry expires, the user's tenant id or None)
        self._known: dict[str, tuple[float, str | None]] = {}

    def forget(self) -> None:
        """Drop every cached tenant: the next lookups ask the database."""
        self._known.clear()

    async def in_tenant(self, user_id: str, tenant_id: str | None) -> bool:
        """Whether ``user_id`` is a user of ``tenant_id`` (None: of no tenant).

        Raises DatabaseError or CircuitOpen when the database cannot say."""
        found, tenant = await self._lookup(user_id)
        return found and tenant == tenant_id

    async def _lookup(self, user_id: str) -> tuple[bool, str | None]:
        now = self._clock()
        cached = self._known.get(user_id)
        if cached is not None and cached[0] > now:
            return True, cached[1]
        try:
            key = uuid.UUID(user_id)
        except ValueError:
            return False, None  # user ids are UUIDs: no query needed
        if str(key) != user_id:
            return False, None  # another spelling of an id would be another stream

        async def select(pool: asyncpg.Pool) -> asyncpg.Record | None:
            row: asyncpg.Record | None = await pool.fetchrow(
                "SELECT tenant_id FROM users WHERE id = $1", key
            )
            return row

        row = await self._db.call(select)
        if row is None:
            return False, None
        tenant = str(row["tenant_id"]) if row["tenant_id"] is not None else None
        if len(self._known) >= CACHE_SIZE:
            self._known.clear()  # rare and cheap: entries come back on their next use
        self._known[user_id] = (now + CACHE_SECONDS, tenant)
        return True, tenant
