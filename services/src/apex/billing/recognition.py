"""Daily ratable revenue recognition (001#100): deferred revenue becomes revenue day by day.

A paid invoice of ``amount`` for a period of ``n`` days (UTC dates from its start's date to
its end's, the end excluded; at least one) has recognised ``floor(amount * k / n)`` once
``k`` of its days have ended: integers only, and the whole amount on its last day (no
remainder is ever lost or made up). :func:`recognise` books, for every paid invoice, the
difference between that and what it has recognised so far, as one transaction per invoice
and date (debit deferred revenue, credit revenue); run twice for one date it books nothing
the second time, and it never takes back what an earlier date recognised.
"""

from __future__ import annotations

import datetime

import asyncpg

from apex.billing.ledger import book, credit, debit

__all__ = ["recognise", "recognised_by"]


def recognised_by(amount: int, start: datetime.date, end: datetime.date, day: datetime.date) -> int:
    """What an invoice of ``amount`` for [start, end) has recognised once ``day`` ended."""
    days = max((end - start).days, 1)
    elapsed = min(max((day - start).days + 1, 0), days)
    return amount * elapsed // days


async def recognise(pool: asyncpg.Pool, day: datetime.date) -> int:
    """Book every paid invoice's recognition up to the end of ``day``; how many
    transactions were booked."""
    booked = 0
    async with pool.acquire() as conn:
        invoices = await conn.fetch(
            "SELECT i.invoice_id, i.tenant_id, i.currency, i.amount_paid, "
            "i.period_start, i.period_end, COALESCE(sum(l.credit), 0) AS done "
            "FROM billing_invoices i LEFT JOIN billing_ledger l "
            "ON l.transaction_id LIKE 'recognise:' || i.invoice_id || ':%' "
            "AND l.account = 'revenue' "
            "WHERE i.amount_paid > 0 GROUP BY i.invoice_id"
        )
        for row in invoices:
            target = recognised_by(
                int(row["amount_paid"]),
                row["period_start"].astimezone(datetime.UTC).date(),
                row["period_end"].astimezone(datetime.UTC).date(),
                day,
            )
            delta = target - int(row["done"])
            if delta <= 0:
                continue
            async with conn.transaction():
                booked += await book(
                    conn,
                    f"recognise:{row['invoice_id']}:{day.isoformat()}",
                    row["tenant_id"],
                    row["currency"],
                    [debit("deferred_revenue", delta), credit("revenue", delta)],
                    f"recognition {row['invoice_id']} through {day.isoformat()}",
                )
    return booked
