"""Refunds of paid invoices, booked in the ledger once (contract-billing.md § Ledger).

A refund debits ``refunds`` and credits ``cash``. Whether it was asked for here
(``POST /admin/billing/refunds``: :meth:`Refunds.refund`, through the provider with an
idempotency key) or made at the provider's side (its ``charge.refunded`` event:
:meth:`Refunds.catch_up`), the ledger is brought to the charge's ``amount_refunded`` as
the provider reports it: the difference to what is booked for the charge is one
transaction ``refund:<charge>:<amount refunded after it>``, so each refund is booked
once whatever path, order or replay reports it, and never more than was paid.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from apex.billing.ledger import book, credit, debit
from apex.billing.payments import PaymentDeclined, PaymentProvider, ProviderUnavailable
from apex.billing.store import BillingStore
from apex.common.http import ApiError

__all__ = ["Refunds"]


class Refunds:
    """Refunds through the provider, and their bookings."""

    def __init__(self, store: BillingStore, provider: PaymentProvider) -> None:
        self.store = store
        self.provider = provider

    async def refund(self, invoice_id: str, amount: int) -> dict[str, Any]:
        """Refund ``amount`` of a paid invoice; 404 ``unknown_invoice`` for an invoice not
        paid here, 422 ``refund_exceeds_paid`` for more than is left of it."""
        async with self.store.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT tenant_id, charge_id, amount_paid FROM billing_invoices "
                "WHERE invoice_id = $1",
                invoice_id,
            )
            if row is None or not row["charge_id"] or row["amount_paid"] <= 0:
                raise ApiError(404, "unknown_invoice", f"no paid invoice {invoice_id[:100]}")
            charge = str(row["charge_id"])
            await _lock(conn, charge)
            refunded = await _booked(conn, charge)
            left = int(row["amount_paid"]) - refunded
            if amount > left:
                raise ApiError(
                    422,
                    "refund_exceeds_paid",
                    f"{amount} is more than the {left} left of invoice {invoice_id}",
                )
            try:
                # The same request after a lost answer finds the same refund there.
                refund = await self.provider.refund(
                    charge, amount, key=f"refund:{charge}:{refunded}:{amount}"
                )
                total = await self._book(conn, row["tenant_id"], charge, invoice_id)
            except (PaymentDeclined, ProviderUnavailable) as exc:
                raise ApiError(503, "provider_unavailable", str(exc)) from exc
        return {
            "refund": refund,
            "invoice_id": invoice_id,
            "amount": amount,
            "refunded": total,
            "currency": "usd",
        }

    async def catch_up(self, conn: asyncpg.Connection, charge: str) -> None:
        """Book what the provider refunded of ``charge`` and the ledger lacks (its
        ``charge.refunded`` event); a charge of no invoice paid here is ignored."""
        row = await conn.fetchrow(
            "SELECT tenant_id, invoice_id FROM billing_invoices WHERE charge_id = $1", charge
        )
        if row is not None:
            await _lock(conn, charge)
            await self._book(conn, row["tenant_id"], charge, row["invoice_id"])

    async def _book(
        self, conn: asyncpg.Connection, tenant: uuid.UUID, charge: str, invoice_id: str
    ) -> int:
        """Book the difference between the charge's refunded amount at the provider and
        the ledger's; the total refunded."""
        found = await self.provider.charge(charge)
        total = int(found.amount_refunded)
        missing = total - await _booked(conn, charge)
        if missing > 0:
            await book(
                conn,
                f"refund:{charge}:{total}",
                tenant,
                str(found.currency),
                [debit("refunds", missing), credit("cash", missing)],
                f"refund of invoice {invoice_id} (charge {charge})",
            )
        return total


async def _lock(conn: asyncpg.Connection, charge: str) -> None:
    # One refund booking per charge at a time, until the transaction ends.
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"refunds:{charge}")


async def _booked(conn: asyncpg.Connection, charge: str) -> int:
    """What the ledger has booked as refunded of ``charge``."""
    total = await conn.fetchval(
        "SELECT coalesce(sum(debit), 0) FROM billing_ledger "
        "WHERE account = 'refunds' AND transaction_id LIKE $1",
        f"refund:{charge}:%",
    )
    return int(total)
