"""The usage summary read through the cache (``GET /v1/usage/summary``).

A summary is computed by the router's reader (the replica when it may serve, else the
primary) and, when the primary computed it, kept in the tenant's cache
(:class:`apex.data.cache.Cache`, part ``usage:<since>:<until>``) until a write bumps the
tenant's generation: the write routes do it right after their commit, the relay again
once it has copied the write's outbox row (a node that missed the first bump is caught
up). A hit answers ``source: cache``. A replica's summary is not kept: it may miss a
write not replayed yet, and kept it would outlive the replica's bounded lag.

Read-your-writes holds through the cache too. An entry carries the WAL position its
source had reached before the query ran (the primary's insert position, the replica's
replay position); a request with ``X-Apex-Min-LSN`` takes a hit only if that position
is strictly past the one asked for, so an entry computed before the write (one whose
invalidation a cut cache node missed) is never served to the writer. Strictly: a commit
whose WAL record ends at the position read may not have been visible yet to the query.
Otherwise the summary is computed again (and stored). ``Cache-Control: no-cache`` skips
the cache: the database answers, and the entry is left as it is.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping
from typing import Any, Final

import asyncpg

from apex.data import usage
from apex.data.cache import Cache
from apex.data.router import parse_lsn
from apex.data.service import DataService

__all__ = ["lsn_value", "read_summary", "summary_part"]

# The position a connection's data has reached: a standby's replay position, a primary's
# insert position (pg_current_wal_insert_lsn fails on a standby; CASE evaluates one).
_POSITION: Final = (
    "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() "
    "ELSE pg_current_wal_insert_lsn() END)::text"
)


def lsn_value(lsn: str) -> int:
    """``16/B374D848`` as a number, for comparing WAL positions."""
    high, low = parse_lsn(lsn).split("/")
    return (int(high, 16) << 32) | int(low, 16)


def summary_part(since: datetime.datetime, until: datetime.datetime) -> str:
    """The cache part of the summary of one window (microseconds since the epoch)."""
    return f"usage:{_micros(since)}:{_micros(until)}"


def _micros(value: datetime.datetime) -> int:
    return (value - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)) // datetime.timedelta(
        microseconds=1
    )


async def read_summary(
    service: DataService,
    cache: Cache | None,
    tenant_id: uuid.UUID,
    since: datetime.datetime,
    until: datetime.datetime,
    *,
    min_lsn: str | None = None,
    use_cache: bool = True,
) -> dict[str, Any]:
    """``tenant_id``'s totals per kind in [since, until) and who answered (``source``:
    cache, replica or primary); see the module's docstring for when the cache answers."""

    async def work() -> dict[str, Any]:
        async with service.router.reader(min_lsn) as (conn, source):
            position = await _position(conn)
            result = await usage.summary(conn, tenant_id, since, until)
        return {**result.to_json(), "source": source, "lsn": position}

    async def compute() -> dict[str, Any]:
        return await service.run(work)

    if cache is None or not use_cache:
        return _answer(await compute())
    part = summary_part(since, until)
    value, result = await cache.get_or_compute(str(tenant_id), compute, part, keep=_from_primary)
    if result == "miss":
        return _answer(value)
    if min_lsn is not None and not _past(value.get("lsn"), min_lsn):
        # Computed before the write the caller saw (or at it): not for this caller.
        generation = await cache.generation(str(tenant_id))
        fresh = await compute()
        if generation is not None and _from_primary(fresh):
            await cache.put(str(tenant_id), generation, part, fresh)
        return _answer(fresh)
    service.metrics.reads.labels("cache").inc()
    return _answer({**value, "source": "cache"})


def _from_primary(value: Mapping[str, Any]) -> bool:
    """Whether a computed summary may be stored: the primary's only. A replica's may miss a
    write it has not replayed yet, and stored it would outlive the replica's lag (bounded
    by APEX_REPLICA_MAX_LAG_BYTES) until the tenant's next write or APEX_CACHE_TTL."""
    return value.get("source") == "primary"


async def _position(conn: asyncpg.Connection) -> str:
    position: str | None = await conn.fetchval(_POSITION)
    # A standby that has replayed nothing yet: position 0, older than any write.
    return position or "0/0"


def _past(position: object, min_lsn: str) -> bool:
    if not isinstance(position, str):
        return False
    try:
        return lsn_value(position) > lsn_value(min_lsn)
    except ValueError:
        return False


def _answer(value: dict[str, Any]) -> dict[str, Any]:
    return {
        "tenant_id": value["tenant_id"],
        "by_kind": value["by_kind"],
        "source": value["source"],
    }
