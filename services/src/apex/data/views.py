"""Materialized views: refreshed concurrently, validated against their base tables.

``REFRESH MATERIALIZED VIEW CONCURRENTLY`` computes the new contents, then applies the
difference (an incremental update of the rows that changed) while holding only an
EXCLUSIVE lock on the view, which SELECTs do not wait for: reads keep being answered,
from the old contents, for the whole refresh. It needs a unique index on the view
(migration 0013 makes one) and a view that was populated once.

The view belongs to ``apex_auditor`` (migration 0013): its query reads every tenant's
records, which only that role's policy allows, and only the owner may refresh it. The
service's role (``apex_data``, a member) refreshes and validates it as that role, in a
transaction of its own; it reads the view as itself (SELECT granted), always with a
tenant filter, since a materialized view has no row-level security.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any, Final

import asyncpg

from apex.data.tenancy import AUDITOR_ROLE

__all__ = ["VIEWS", "RefreshResult", "daily_usage", "refresh", "validate"]

# Each view and the query that defines it (kept in step with its migration): validate()
# compares the two.
VIEWS: Final[Mapping[str, str]] = {
    "usage_daily": (
        "SELECT tenant_id, (occurred_at AT TIME ZONE 'UTC')::date AS day, kind, "
        "sum(quantity)::bigint AS quantity, sum(cost_micros)::bigint AS cost_micros "
        "FROM usage_records GROUP BY 1, 2, 3"
    ),
}


@dataclasses.dataclass(frozen=True)
class RefreshResult:
    """One refresh: the view, its row count after, how long it took, and how many rows
    differ from its base query (0 when the refresh is exact)."""

    view: str
    rows: int
    seconds: float
    mismatched: int

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON."""
        return dataclasses.asdict(self)


def _known(view: str) -> str:
    if view not in VIEWS:
        raise ValueError(f"unknown materialized view {view!r}; known: {sorted(VIEWS)}")
    return view


async def refresh(conn: asyncpg.Connection, view: str = "usage_daily") -> RefreshResult:
    """Refresh ``view`` concurrently, then validate it; the view's name must be known."""
    name = _known(view)
    started = time.perf_counter()
    async with conn.transaction():
        await conn.execute(f"SET LOCAL ROLE {AUDITOR_ROLE}")
        # The name is one of VIEWS (checked above), never the caller's text.
        await conn.execute(f"REFRESH MATERIALIZED VIEW CONCURRENTLY {name}")
    seconds = time.perf_counter() - started
    rows = int(await conn.fetchval(f"SELECT count(*) FROM {name}"))  # noqa: S608
    return RefreshResult(name, rows, round(seconds, 6), await validate(conn, name))


async def validate(conn: asyncpg.Connection, view: str = "usage_daily") -> int:
    """How many rows differ between ``view`` and its defining query (both directions)."""
    name = _known(view)
    query = VIEWS[name]
    sql = (
        f"SELECT (SELECT count(*) FROM (SELECT * FROM {name} EXCEPT ALL {query}) a) "  # noqa: S608
        f"+ (SELECT count(*) FROM ({query} EXCEPT ALL SELECT * FROM {name}) b)"
    )
    async with conn.transaction(readonly=True):
        await conn.execute(f"SET LOCAL ROLE {AUDITOR_ROLE}")
        return int(await conn.fetchval(sql))


async def daily_usage(conn: asyncpg.Connection, tenant_id: str) -> list[dict[str, Any]]:
    """``tenant_id``'s rows of usage_daily, by day and kind (the view has no row-level
    security: the tenant filter here is what isolates tenants)."""
    rows = await conn.fetch(
        "SELECT day, kind, quantity, cost_micros FROM usage_daily WHERE tenant_id = $1::uuid "
        "ORDER BY day, kind",
        tenant_id,
    )
    return [
        {
            "day": row["day"].isoformat(),
            "kind": row["kind"],
            "quantity": row["quantity"],
            "cost_micros": row["cost_micros"],
        }
        for row in rows
    ]
