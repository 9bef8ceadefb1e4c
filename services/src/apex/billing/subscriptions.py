"""The subscription lifecycle (001#96, 001#99): free to paid, upgrade, downgrade, cancel,
resume, and what a paid invoice books.

:class:`Subscriptions` drives the provider (``payments``) and keeps the tenant's state
(``store``), its entitlements (``entitlements``) and the ledger in step. A tenant's changes
are serialised by a PostgreSQL advisory lock on the tenant, so two requests never make
two subscriptions. The provider's word is final: after each change the subscription is
fetched (or taken from the provider's answer) and recorded with the time the fetch began,
so an older state never overwrites a newer one, whatever order webhooks arrive in.
"""

from __future__ import annotations

import contextlib
import datetime
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Final

import asyncpg
import stripe
from redis.asyncio import Redis

from apex.billing.entitlements import publish
from apex.billing.ledger import book, credit, debit
from apex.billing.payments import PaymentDeclined, PaymentProvider, ProviderUnavailable
from apex.billing.plans import CURRENCY, FREE, Plan
from apex.billing.settings import BillingSettings
from apex.billing.store import BillingStore, SubscriptionRow
from apex.common.http import ApiError

__all__ = ["LIVE", "Subscriptions"]

# Statuses in which the subscription's plan applies (dunning keeps the paid tier until
# the provider cancels).
LIVE: Final = frozenset({"active", "trialing", "past_due"})


def _time(value: Any) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(int(value), datetime.UTC)


class Subscriptions:
    """The lifecycle of tenants' subscriptions."""

    def __init__(
        self,
        settings: BillingSettings,
        *,
        store: BillingStore,
        provider: PaymentProvider,
        redis: Redis,
    ) -> None:
        self.settings = settings
        self.store = store
        self.provider = provider
        self.redis = redis

    def plan(self, name: str) -> Plan:
        found = self.settings.plans.get(name)
        if found is None:
            known = ", ".join(self.settings.plans)
            raise ApiError(422, "unknown_plan", f"no plan {name!r}; plans: {known}")
        return found

    async def state(self, tenant: uuid.UUID) -> dict[str, Any]:
        """The tenant's plan, status and limits (``free`` without a live subscription)."""
        row = await self.store.subscription(tenant)
        if row is None:
            view: dict[str, Any] = {"plan": FREE, "status": "none"}
        else:
            view = row.view()
            if row.status not in LIVE:
                view["plan"] = FREE
        view["limits"] = self.plan(view["plan"]).limits()
        return view

    @contextlib.asynccontextmanager
    async def _locked(self, tenant: uuid.UUID) -> AsyncIterator[asyncpg.Connection]:
        async with self.store.pool.acquire() as conn, conn.transaction():
            await _lock(conn, tenant)
            yield conn

    async def subscribe(
        self,
        tenant: uuid.UUID,
        plan_name: str,
        payment_method: str,
        *,
        trial_days: int,
        test_clock: str | None,
    ) -> dict[str, Any]:
        """Free to paid: a customer (once), the card, a subscription whose first invoice is
        paid, or nothing at all (402 ``payment_declined``)."""
        plan = self.plan(plan_name)
        if plan.name == FREE:
            raise ApiError(422, "invalid_plan", "every tenant is on free; subscribe to a paid plan")
        if test_clock is not None and not self.settings.test_mode:
            raise ApiError(422, "invalid_request", "test clocks exist only with a test key")
        async with self._locked(tenant) as conn:
            current = await self.store.subscription(tenant)
            if current is not None and current.status in LIVE:
                raise ApiError(409, "already_subscribed", f"the tenant is on {current.plan}")
            try:
                customer = await self._customer(tenant, test_clock)
                price = await self._price(plan)
                await self.provider.attach(customer, payment_method)
                subscription = await self.provider.subscribe(
                    customer, price, trial_days=trial_days, key=f"subscribe:{uuid.uuid4()}"
                )
            except PaymentDeclined as exc:
                raise ApiError(402, "payment_declined", f"{exc.code}: {exc.message}") from exc
            except ProviderUnavailable as exc:
                raise ApiError(503, "provider_unavailable", str(exc)) from exc
            row = self._row(tenant, subscription, plan.name, time.time_ns())
            await self.store.save_subscription(conn, row)
            await self._book_latest_invoice(conn, tenant, subscription)
        await self._publish(row)
        return await self.state(tenant)

    async def change(self, tenant: uuid.UUID, plan_name: str) -> dict[str, Any]:
        """Another paid plan: an upgrade prorated and invoiced now, a downgrade with the
        unused time credited to the next invoice."""
        plan = self.plan(plan_name)
        if plan.name == FREE:
            raise ApiError(422, "invalid_plan", "to go back to free, cancel the subscription")
        async with self._locked(tenant) as conn:
            current = await self._live(tenant)
            if current.plan == plan.name:
                return await self.state(tenant)
            upgrade = plan.price > self.plan(current.plan).price
            started = time.time_ns()
            try:
                price = await self._price(plan)
                subscription = await self.provider.change(
                    current.subscription_id,
                    current.item_id,
                    price,
                    prorate_now=upgrade,
                    key=f"change:{uuid.uuid4()}",
                )
            except PaymentDeclined as exc:
                raise ApiError(402, "payment_declined", f"{exc.code}: {exc.message}") from exc
            except ProviderUnavailable as exc:
                raise ApiError(503, "provider_unavailable", str(exc)) from exc
            row = self._row(tenant, subscription, plan.name, started)
            await self.store.save_subscription(conn, row)
            if upgrade:
                await self._book_latest_invoice(conn, tenant, subscription)
        await self._publish(row)
        return await self.state(tenant)

    async def cancel(self, tenant: uuid.UUID, *, cancel: bool) -> dict[str, Any]:
        """End the subscription at its period's end (``cancel``), or undo that."""
        async with self._locked(tenant) as conn:
            current = await self._live(tenant)
            started = time.time_ns()
            try:
                subscription = await self.provider.cancel_at_period_end(
                    current.subscription_id, cancel, key=f"cancel:{uuid.uuid4()}"
                )
            except (PaymentDeclined, ProviderUnavailable) as exc:
                raise ApiError(503, "provider_unavailable", str(exc)) from exc
            await self.store.save_subscription(
                conn, self._row(tenant, subscription, current.plan, started)
            )
        return await self.state(tenant)

    async def refresh(
        self, conn: asyncpg.Connection, subscription_id: str
    ) -> SubscriptionRow | None:
        """Record the subscription as the provider has it now (a webhook said it changed);
        None when it is no tenant's, or a newer state is recorded already.

        Under the tenant's lock, for the rest of the webhook's transaction: a change of the
        tenant's holds it from before its provider call until its state is recorded, and a
        state fetched meanwhile (the old plan) would be recorded as newer than the change's.
        """
        tenant = await self.store.tenant_of_subscription(subscription_id)
        if tenant is None:  # a subscription not recorded yet: its customer says whose
            subscription = await self.provider.subscription(subscription_id)
            tenant = await self.store.tenant_of_customer(str(subscription.customer))
            if tenant is None:
                return None
        await _lock(conn, tenant)
        started = time.time_ns()
        subscription = await self.provider.subscription(subscription_id)
        price = str(subscription["items"]["data"][0]["price"]["id"])
        plan = await self.store.plan_of_price(price)
        if plan is None:
            return None
        row = self._row(tenant, subscription, plan, started)
        return row if await self.store.save_subscription(conn, row) else None

    async def record_invoice(
        self, conn: asyncpg.Connection, tenant: uuid.UUID, invoice: stripe.Invoice
    ) -> bool:
        """A paid invoice: stored, and booked once (debit cash, credit deferred revenue)."""
        if invoice.status != "paid":
            return False
        amount = int(invoice.amount_paid)
        lines = invoice.lines.data
        start = min(int(line.period.start) for line in lines)
        end = max(int(line.period.end) for line in lines)
        await conn.execute(
            "INSERT INTO billing_invoices (invoice_id, tenant_id, subscription_id, amount_paid, "
            "currency, period_start, period_end, charge_id) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (invoice_id) DO NOTHING",
            invoice.id,
            tenant,
            str(invoice["subscription"]),
            amount,
            invoice.currency,
            _time(start),
            _time(end),
            invoice["charge"],
        )
        if amount == 0:
            return False
        return await book(
            conn,
            f"invoice:{invoice.id}",
            tenant,
            invoice.currency,
            [debit("cash", amount), credit("deferred_revenue", amount)],
            f"invoice {invoice.id} paid",
        )

    async def publish(self, row: SubscriptionRow) -> None:
        await self._publish(row)

    async def _book_latest_invoice(
        self, conn: asyncpg.Connection, tenant: uuid.UUID, subscription: stripe.Subscription
    ) -> None:
        if subscription.latest_invoice:
            invoice = await self.provider.invoice(str(subscription.latest_invoice))
            await self.record_invoice(conn, tenant, invoice)

    async def _live(self, tenant: uuid.UUID) -> SubscriptionRow:
        current = await self.store.subscription(tenant)
        if current is None or current.status not in LIVE:
            raise ApiError(409, "no_subscription", "the tenant has no live subscription")
        return current

    async def _customer(self, tenant: uuid.UUID, test_clock: str | None) -> str:
        found = await self.store.customer(tenant)
        if found is None:
            found = await self.provider.customer(str(tenant), test_clock)
            await self.store.save_customer(tenant, found)
        return found

    async def _price(self, plan: Plan) -> str:
        found = await self.store.price(plan.name, plan.price)
        if found is None:
            found = await self.provider.price(plan.name, plan.price, CURRENCY)
            await self.store.save_price(plan.name, plan.price, found)
        return found

    def _row(
        self, tenant: uuid.UUID, subscription: stripe.Subscription, plan: str, version: int
    ) -> SubscriptionRow:
        item = subscription["items"]["data"][0]
        return SubscriptionRow(
            tenant_id=tenant,
            subscription_id=str(subscription.id),
            item_id=str(item["id"]),
            plan=plan,
            status=str(subscription.status),
            current_period_end=_time(item["current_period_end"]),
            cancel_at_period_end=bool(subscription.cancel_at_period_end),
            provider_updated=version,
        )

    async def _publish(self, row: SubscriptionRow) -> None:
        plan = self.plan(row.plan if row.status in LIVE else FREE)
        await publish(
            self.redis, self.settings.redis_prefix, row.tenant_id, plan, self.settings.plans
        )


async def _lock(conn: asyncpg.Connection, tenant: uuid.UUID) -> None:
    """Take the tenant's lock until the end of `conn`'s transaction."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"billing:{tenant}")
