"""A tenant's usage of a period on its provider invoices: once, and corrected when usage
arrives late (notes-billing.md § Metering, § Scheduled invoicing).

:func:`invoice_period` brings what the provider was asked to bill for a period to the
period's lines as metered now: for each line, its price (:func:`price_of`, rounded up
once per line) minus what its invoice items so far add up to (``billing_usage_items``)
becomes one more invoice item on the subscription's next invoice. The first item of a
line is keyed ``usage:`` + sha256(customer, from, to, kind, agent, model); a correction
(usage that reached the aggregates after the period was invoiced) is keyed with the
line's new price as well. The keys are deterministic, so a call retried after a crash
between the provider's answer and the record finds the same item at the provider. So
the items of a line always add up to the price of the line as metered (to the cent),
and a call that finds nothing new adds nothing. Usage never shrinks (records are never
changed); a line whose price fell below what was invoiced gets no item. Calls for one
tenant are serialised (a PostgreSQL advisory lock), and the period is recorded in
``billing_usage_periods`` so the schedule does not invoice it a first time again.
"""

from __future__ import annotations

import datetime
import hashlib
import uuid
from typing import Any

import asyncpg

from apex.billing.metering import Line, price_of
from apex.billing.payments import PaymentProvider

__all__ = ["invoice_period"]


async def invoice_period(
    pool: asyncpg.Pool,
    provider: PaymentProvider,
    *,
    tenant: uuid.UUID,
    customer: str,
    subscription: str,
    since: datetime.datetime,
    until: datetime.datetime,
    lines: list[Line],
) -> tuple[list[dict[str, Any]], int]:
    """Invoice what the period's ``lines`` add to what was invoiced for it: every item of
    the period so far (``kind``, ``agent``, ``model``, ``amount``, ``invoice_item``,
    ``correction``), in the order they were made, and how many this call added."""
    period = (tenant, since, until)
    added = 0
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"usage-invoice:{tenant}"
        )
        rows = await conn.fetch(
            "SELECT kind, agent, model, sum(amount) AS amount FROM billing_usage_items "
            "WHERE tenant_id = $1 AND period_start = $2 AND period_end = $3 "
            "GROUP BY kind, agent, model",
            *period,
        )
        invoiced = {(r["kind"], r["agent"], r["model"]): int(r["amount"]) for r in rows}
        for line in lines:
            price = price_of(line.cost_micros)
            before = invoiced.get(line.key, 0)
            if price <= before:
                continue
            correction = before > 0
            what = [customer, since.isoformat(), until.isoformat(), *line.key]
            if correction:
                what.append(str(price))
            key = f"usage:{hashlib.sha256(chr(0).join(what).encode()).hexdigest()}"
            label = " ".join(part for part in line.key if part)
            description = f"Usage {since.isoformat()} to {until.isoformat()}: {label}"
            if correction:
                description += " (late usage)"
            item = await provider.invoice_item(
                customer, subscription, price - before, description, key=key
            )
            await conn.execute(
                "INSERT INTO billing_usage_items (tenant_id, period_start, period_end, kind, "
                "agent, model, amount, invoice_item, correction) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (invoice_item) DO NOTHING",
                *period,
                *line.key,
                price - before,
                item,
                correction,
            )
            added += 1
        await conn.execute(
            "INSERT INTO billing_usage_periods (tenant_id, period_start, period_end) "
            "VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            *period,
        )
        items = await conn.fetch(
            "SELECT kind, agent, model, amount, invoice_item, correction "
            "FROM billing_usage_items "
            "WHERE tenant_id = $1 AND period_start = $2 AND period_end = $3 ORDER BY id",
            *period,
        )
    return [dict(item) for item in items], added
