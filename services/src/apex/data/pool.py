"""PostgreSQL connection pools.

Every connection of a pool acts as ``apex_app`` (migration 0010), set at connect time:
neither superuser nor BYPASSRLS, so row-level security holds for all of a service's
queries. One that forgets :func:`apex.data.tenancy.tenant_transaction` sees no tenant's
rows rather than every tenant's, whatever the login (a superuser, the tables' owner).
"""

from __future__ import annotations

import asyncpg

__all__ = ["APP_ROLE", "create_pool"]

# The role the services act as (migration 0010); its rights: the tables' rows only.
APP_ROLE = "apex_app"

# A query that takes longer than this is a bug or an outage, not a slow request:
# fail it so the caller gets an answer (503) instead of a hung connection.
COMMAND_TIMEOUT_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 10.0


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """Open an asyncpg pool on ``dsn`` (``postgresql://user:pw@host:port/db``) whose
    connections act as APP_ROLE (a startup parameter: RESET ALL, which the pool runs on
    every release, returns to it; a transaction's SET LOCAL ROLE ends with it)."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=CONNECT_TIMEOUT_SECONDS,
        command_timeout=COMMAND_TIMEOUT_SECONDS,
        server_settings={"application_name": "apex", "role": APP_ROLE},
    )
    if pool is None:  # pragma: no cover - asyncpg types the awaited pool as optional
        raise RuntimeError("asyncpg.create_pool returned no pool")
    return pool
