"""Deleting what tenants wrote (``POST /admin/tenants/purge``): a test run's tenants at
the end of an L4 run, or an operator's.

For each tenant: its usage records (in that tenant's transaction: RLS scopes the delete
to them), the outbox rows that carry them or its credit transfers (relayed or not: a
pending one would copy a deleted record to ClickHouse), its credit transfers and
balance; then its cached summaries and balance are invalidated. What the relay already
copied to ClickHouse stays there (the reference check, ``GET /admin/references/check``,
reports such events as orphans, and its repair deletes them).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from typing import Final

import asyncpg

from apex.data.tenancy import tenant_transaction

__all__ = ["Purged", "purge_tenants"]

_OUTBOX: Final = """
DELETE FROM outbox
WHERE (topic = 'usage' AND payload->>'tenant_id' = ANY($1::text[]))
   OR (topic = 'credit_transfer'
       AND (payload->>'from_tenant' = ANY($1::text[]) OR payload->>'to_tenant' = ANY($1::text[])))
"""
_TRANSFERS: Final = (
    "DELETE FROM credit_transfers "
    "WHERE from_tenant = ANY($1::uuid[]) OR to_tenant = ANY($1::uuid[])"
)
_CREDITS: Final = "DELETE FROM tenant_credits WHERE tenant_id = ANY($1::uuid[])"


@dataclasses.dataclass(frozen=True)
class Purged:
    """How many rows of each table a purge deleted."""

    usage_records: int
    outbox: int
    credit_transfers: int
    tenant_credits: int

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


async def purge_tenants(conn: asyncpg.Connection, tenants: Sequence[uuid.UUID]) -> Purged:
    """Delete the rows of ``tenants`` (see the module's docstring). Idempotent: a purge
    cut half way is completed by running it again."""
    # The outbox rows first: the relay must not copy a record deleted below.
    async with conn.transaction():
        outbox = _count(await conn.execute(_OUTBOX, [str(t) for t in tenants]))
        transfers = _count(await conn.execute(_TRANSFERS, list(tenants)))
        credits = _count(await conn.execute(_CREDITS, list(tenants)))
    records = 0
    for tenant in tenants:
        # A transaction each, not savepoints: SET LOCAL ROLE would outlive a savepoint.
        async with tenant_transaction(conn, tenant):
            records += _count(await conn.execute("DELETE FROM usage_records"))
    return Purged(records, outbox, transfers, credits)


def _count(status: str) -> int:
    """The row count of a ``DELETE n`` command status."""
    return int(status.rsplit(" ", 1)[-1])
