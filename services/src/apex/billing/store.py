"""apex.billing's rows in PostgreSQL (migration 0018): customers, prices, subscriptions,
processed webhook events and invoices. Every query names the tenant or the provider id.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from typing import Any

import asyncpg

__all__ = ["BillingStore", "SubscriptionRow"]


@dataclasses.dataclass(frozen=True)
class SubscriptionRow:
    """A tenant's subscription as last known."""

    tenant_id: uuid.UUID
    subscription_id: str
    item_id: str
    plan: str
    status: str
    current_period_end: datetime.datetime
    cancel_at_period_end: bool
    provider_updated: int

    def view(self) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "status": self.status,
            "subscription_id": self.subscription_id,
            "current_period_end": self.current_period_end.isoformat(),
            "cancel_at_period_end": self.cancel_at_period_end,
        }


class BillingStore:
    """Reads and writes apex.billing's tables."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def ping(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")

    async def customer(self, tenant: uuid.UUID) -> str | None:
        async with self.pool.acquire() as conn:
            found: str | None = await conn.fetchval(
                "SELECT customer_id FROM billing_customers WHERE tenant_id = $1", tenant
            )
        return found

    async def tenant_of_customer(self, customer: str) -> uuid.UUID | None:
        async with self.pool.acquire() as conn:
            found: uuid.UUID | None = await conn.fetchval(
                "SELECT tenant_id FROM billing_customers WHERE customer_id = $1", customer
            )
        return found

    async def tenant_of_subscription(self, subscription: str) -> uuid.UUID | None:
        """The tenant whose subscription is recorded under this provider id, if any."""
        async with self.pool.acquire() as conn:
            found: uuid.UUID | None = await conn.fetchval(
                "SELECT tenant_id FROM billing_subscriptions WHERE subscription_id = $1",
                subscription,
            )
        return found

    async def save_customer(self, tenant: uuid.UUID, customer: str) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO billing_customers (tenant_id, customer_id) VALUES ($1, $2) "
                "ON CONFLICT (tenant_id) DO NOTHING",
                tenant,
                customer,
            )

    async def price(self, plan: str, amount: int) -> str | None:
        async with self.pool.acquire() as conn:
            found: str | None = await conn.fetchval(
                "SELECT price_id FROM billing_prices WHERE plan = $1 AND amount = $2", plan, amount
            )
        return found

    async def save_price(self, plan: str, amount: int, price: str) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO billing_prices (plan, amount, price_id) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING",
                plan,
                amount,
                price,
            )

    async def plan_of_price(self, price: str) -> str | None:
        async with self.pool.acquire() as conn:
            found: str | None = await conn.fetchval(
                "SELECT plan FROM billing_prices WHERE price_id = $1", price
            )
        return found

    async def subscription(self, tenant: uuid.UUID) -> SubscriptionRow | None:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT tenant_id, subscription_id, item_id, plan, status, current_period_end, "
                "cancel_at_period_end, provider_updated FROM billing_subscriptions "
                "WHERE tenant_id = $1",
                tenant,
            )
        return None if row is None else SubscriptionRow(**dict(row))

    async def save_subscription(self, conn: asyncpg.Connection, row: SubscriptionRow) -> bool:
        """Record the provider's state unless a newer one is recorded (by
        ``provider_updated``); whether it was recorded."""
        outcome = await conn.execute(
            "INSERT INTO billing_subscriptions (tenant_id, subscription_id, item_id, plan, "
            "status, current_period_end, cancel_at_period_end, provider_updated) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (tenant_id) DO UPDATE SET "
            "subscription_id = EXCLUDED.subscription_id, item_id = EXCLUDED.item_id, "
            "plan = EXCLUDED.plan, status = EXCLUDED.status, "
            "current_period_end = EXCLUDED.current_period_end, "
            "cancel_at_period_end = EXCLUDED.cancel_at_period_end, "
            "provider_updated = EXCLUDED.provider_updated, updated_at = now() "
            "WHERE billing_subscriptions.provider_updated <= EXCLUDED.provider_updated",
            row.tenant_id,
            row.subscription_id,
            row.item_id,
            row.plan,
            row.status,
            row.current_period_end,
            row.cancel_at_period_end,
            row.provider_updated,
        )
        return bool(outcome.endswith(" 1"))

    async def invoices(self, tenant: uuid.UUID) -> list[dict[str, Any]]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT invoice_id, subscription_id, amount_paid, currency, period_start, "
                "period_end, refunded FROM billing_invoices WHERE tenant_id = $1 "
                "ORDER BY paid_at, invoice_id",
                tenant,
            )
        return [
            {
                "invoice_id": r["invoice_id"],
                "subscription_id": r["subscription_id"],
                "amount_paid": {"amount": r["amount_paid"], "currency": r["currency"]},
                "period_start": r["period_start"].isoformat(),
                "period_end": r["period_end"].isoformat(),
                "refunded": r["refunded"],
            }
            for r in rows
        ]
