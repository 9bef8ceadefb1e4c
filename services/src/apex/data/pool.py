"""PostgreSQL connection pools."""

from __future__ import annotations

import asyncpg

__all__ = ["create_pool"]

# A query that takes longer than this is a bug or an outage, not a slow request:
# fail it so the caller gets an answer (503) instead of a hung connection.
COMMAND_TIMEOUT_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 10.0


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
