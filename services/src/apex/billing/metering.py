"""Usage metering (001#97): a tenant's usage of a period, priced, and its check.

The aggregates come from ClickHouse (apex.data's relay copies every usage record there,
each once: ``usage_events FINAL``), through :data:`apex.data.clickhouse_sql.USAGE_BY_LINE`:
one line per kind, agent and model. The check recomputes the same lines from the raw
records in PostgreSQL (``usage_records``, the tenant's rows under row-level security)
and compares them to the cent. The period is ``[since, until)`` in whole UTC seconds
(ClickHouse keeps ``occurred_at`` to the second, so the raw rows are compared at that
precision too).

Price rule (notes-billing.md § Metering): a line's price is its cost in micro-dollars
converted to US cents and rounded up, once per line (``ceil(cost_micros / 10_000)``);
an invoice's usage total is the sum of its lines' prices. Integers only.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from collections.abc import Iterable
from typing import Any, Final

import asyncpg

from apex.common.http import ApiError
from apex.data import clickhouse_sql
from apex.data.clickhouse import ClickHouse, ClickHouseError
from apex.data.tenancy import tenant_transaction

__all__ = [
    "CURRENCY",
    "MICROS_PER_CENT",
    "Line",
    "Metering",
    "period_view",
    "price_of",
]

CURRENCY: Final = "usd"
MICROS_PER_CENT: Final = 10_000
# The raw records of the period, at ClickHouse's precision (whole seconds).
_RAW: Final = """
SELECT kind, coalesce(labels->>'agent', '') AS agent, coalesce(labels->>'model', '') AS model,
    quantity, cost_micros
FROM usage_records
WHERE tenant_id = $1 AND date_trunc('second', occurred_at) >= $2
    AND date_trunc('second', occurred_at) < $3
"""


def price_of(cost_micros: int) -> int:
    """A line's price in US cents: its cost in micro-dollars, rounded up to the cent."""
    if cost_micros < 0:
        raise ValueError(f"cost_micros must not be negative, got {cost_micros}")
    return -(-cost_micros // MICROS_PER_CENT)


@dataclasses.dataclass(frozen=True)
class Line:
    """The usage of one kind, agent and model in a period, and its price (cents)."""

    kind: str
    agent: str
    model: str
    quantity: int
    cost_micros: int
    events: int

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.agent, self.model)

    def view(self) -> dict[str, Any]:
        """The line as the API returns it."""
        return {
            "kind": self.kind,
            "agent": self.agent,
            "model": self.model,
            "quantity": self.quantity,
            "cost_micros": self.cost_micros,
            "events": self.events,
            "price": {"amount": price_of(self.cost_micros), "currency": CURRENCY},
        }


def period_view(
    tenant: uuid.UUID, since: datetime.datetime, until: datetime.datetime, lines: list[Line]
) -> dict[str, Any]:
    """A period's usage lines with their total (the sum of the lines' prices)."""
    total = sum(price_of(line.cost_micros) for line in lines)
    return {
        "tenant_id": str(tenant),
        "from": since.isoformat(),
        "to": until.isoformat(),
        "lines": [line.view() for line in lines],
        "total": {"amount": total, "currency": CURRENCY},
    }


def _lines(rows: Iterable[tuple[Any, ...]]) -> list[Line]:
    """Lines summed per (kind, agent, model) from ``(kind, agent, model, quantity, cost,
    events)`` rows, in key order."""
    totals: dict[tuple[str, str, str], list[int]] = {}
    for kind, agent, model, quantity, cost, events in rows:
        sums = totals.setdefault((str(kind), str(agent), str(model)), [0, 0, 0])
        sums[0] += int(quantity)
        sums[1] += int(cost)
        sums[2] += int(events)
    return [Line(*key, *sums) for key, sums in sorted(totals.items())]


class Metering:
    """The usage aggregates (ClickHouse) and the raw records (PostgreSQL) of a tenant."""

    def __init__(self, pool: asyncpg.Pool, clickhouse: ClickHouse | None) -> None:
        self.pool = pool
        self.clickhouse = clickhouse

    async def usage(
        self, tenant: uuid.UUID, since: datetime.datetime, until: datetime.datetime
    ) -> list[Line]:
        """The tenant's usage lines of ``[since, until)`` from ClickHouse's aggregates."""
        if self.clickhouse is None:
            raise ApiError(503, "clickhouse_unavailable", "APEX_CLICKHOUSE_URL is not set")
        params = {
            "tenant": str(tenant),
            "since": int(since.timestamp()),
            "until": int(until.timestamp()),
        }
        try:
            rows = await self.clickhouse.execute(clickhouse_sql.USAGE_BY_LINE, params)
        except ClickHouseError as exc:
            if "usage_events" in str(exc) and "doesn't exist" in str(exc):
                return []  # nothing relayed yet: the relay makes the table on its first pass
            raise ApiError(503, "clickhouse_unavailable", "ClickHouse is unreachable") from exc
        return _lines(rows)

    async def raw(
        self, tenant: uuid.UUID, since: datetime.datetime, until: datetime.datetime
    ) -> list[Line]:
        """The same lines recomputed here from the tenant's raw records in PostgreSQL."""
        async with self.pool.acquire() as conn, tenant_transaction(conn, tenant):
            rows = await conn.fetch(_RAW, tenant, since, until)
        return _lines(
            (r["kind"], r["agent"], r["model"], r["quantity"], r["cost_micros"], 1) for r in rows
        )

    async def check(
        self, tenant: uuid.UUID, since: datetime.datetime, until: datetime.datetime
    ) -> dict[str, Any]:
        """The aggregates against the raw records: every line and the total, to the cent."""
        aggregated = {line.key: line for line in await self.usage(tenant, since, until)}
        raw = {line.key: line for line in await self.raw(tenant, since, until)}
        mismatches = [
            {
                "kind": key[0],
                "agent": key[1],
                "model": key[2],
                "aggregate": aggregated[key].view() if key in aggregated else None,
                "raw": raw[key].view() if key in raw else None,
            }
            for key in sorted(aggregated.keys() | raw.keys())
            if aggregated.get(key) != raw.get(key)
        ]
        totals = {
            name: sum(price_of(line.cost_micros) for line in lines.values())
            for name, lines in (("aggregate", aggregated), ("raw", raw))
        }
        return {
            "tenant_id": str(tenant),
            "ok": not mismatches and totals["aggregate"] == totals["raw"],
            "lines": len(raw),
            "events": sum(line.events for line in raw.values()),
            "total": {
                "aggregate": {"amount": totals["aggregate"], "currency": CURRENCY},
                "raw": {"amount": totals["raw"], "currency": CURRENCY},
            },
            "mismatches": mismatches,
        }
