"""The billing schedule: what an operator would otherwise call by hand, run periodically
(notes-billing.md § Scheduled invoicing).

Every APEX_BILLING_SCHEDULE_INTERVAL seconds (3600; ``0`` or ``off``: never; the first
pass one interval after the start) :meth:`Schedule.run_once`:

1. **Usage invoices** (with APEX_CLICKHOUSE_URL): time is cut into periods of
   APEX_USAGE_PERIOD seconds aligned to the Unix epoch (86400: UTC days). For each tenant
   with a live subscription, each period that has ended, from the one in which the tenant
   became the provider's customer, and was not invoiced yet is invoiced
   (:func:`apex.billing.usage_invoices.invoice_period`), oldest first, at most
   :data:`MAX_NEW_PERIODS` per tenant and pass (the next pass goes on). Every invoiced
   period of a live tenant that ended within the last APEX_USAGE_LATE_WINDOW seconds (7
   days) is invoiced again: that adds an item only for usage that arrived late (a
   correction), so the invoices keep agreeing with the raw events.
2. **Recognition** through the end of yesterday, UTC (:func:`apex.billing.recognition.
   recognise`).

Each step books or invoices nothing twice, so passes of several instances may overlap
and a pass may be repeated (``POST /admin/billing/schedule/run`` runs one now). A failing
pass is logged; the next one retries. :meth:`Schedule.start` runs the loop as a task and
:meth:`Schedule.stop` ends it (:func:`apex.common.tasks.stop_tasks`).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import uuid
from typing import Any, Final

import asyncpg

from apex.billing.metering import Metering
from apex.billing.payments import PaymentProvider
from apex.billing.recognition import recognise
from apex.billing.settings import BillingSettings
from apex.billing.subscriptions import LIVE
from apex.billing.usage_invoices import invoice_period
from apex.common.tasks import stop_tasks

__all__ = ["MAX_NEW_PERIODS", "Schedule"]

log = logging.getLogger(__name__)

MAX_NEW_PERIODS: Final = 100
STOP_TIMEOUT: Final = 5.0


def _at(seconds: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


class Schedule:
    """The periodic usage invoicing and revenue recognition of one instance."""

    def __init__(
        self,
        settings: BillingSettings,
        pool: asyncpg.Pool,
        metering: Metering,
        provider: PaymentProvider,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._metering = metering
        self._provider = provider
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run a pass every APEX_BILLING_SCHEDULE_INTERVAL seconds (nothing when it is 0)."""
        if self._settings.schedule_interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="billing-schedule")

    async def stop(self) -> None:
        """End the loop (a pass in flight is cancelled: every step of it is idempotent)."""
        left = await stop_tasks([self._task], STOP_TIMEOUT)
        if left:  # pragma: no cover - stop_tasks cancels until it ends
            log.error("the billing schedule did not stop within %s s", STOP_TIMEOUT)
        self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.schedule_interval)
            try:
                await self.run_once()
            except Exception:
                log.exception("a billing schedule pass failed; the next one retries")

    async def run_once(self, now: datetime.datetime | None = None) -> dict[str, Any]:
        """One pass: ``{periods, items, recognised, date}`` (usage periods invoiced or
        checked again, invoice items added, recognition transactions booked, the day
        recognised through)."""
        now = now or datetime.datetime.now(datetime.UTC)
        periods = items = 0
        if self._metering.clickhouse is not None:
            for tenant, customer, subscription, since, until in await self._due(now):
                lines = await self._metering.usage(tenant, since, until)
                _, added = await invoice_period(
                    self._pool, self._provider, tenant=tenant, customer=customer,
                    subscription=subscription, since=since, until=until, lines=lines,
                )  # fmt: skip
                periods += 1
                items += added
        day = now.astimezone(datetime.UTC).date() - datetime.timedelta(days=1)
        recognised = await recognise(self._pool, day)
        return {"periods": periods, "items": items, "recognised": recognised, "date": str(day)}

    async def _due(
        self, now: datetime.datetime
    ) -> list[tuple[uuid.UUID, str, str, datetime.datetime, datetime.datetime]]:
        """The periods to invoice now: each live tenant's new closed periods, then its
        invoiced periods that ended within the late window."""
        length = self._settings.usage_period
        closed_until = int(now.timestamp()) // length * length
        late_since = now - datetime.timedelta(seconds=self._settings.usage_late_window)
        due = []
        async with self._pool.acquire() as conn:
            tenants = await conn.fetch(
                "SELECT s.tenant_id, s.subscription_id, c.customer_id, c.created_at "
                "FROM billing_subscriptions s JOIN billing_customers c USING (tenant_id) "
                "WHERE s.status = ANY($1::text[]) ORDER BY s.tenant_id",
                sorted(LIVE),
            )
            for row in tenants:
                tenant, customer = row["tenant_id"], row["customer_id"]
                invoiced = await conn.fetch(
                    "SELECT period_start, period_end FROM billing_usage_periods "
                    "WHERE tenant_id = $1 ORDER BY period_start, period_end",
                    tenant,
                )
                known = {(r["period_start"], r["period_end"]) for r in invoiced}
                start = int(row["created_at"].timestamp()) // length * length
                new: list[tuple[datetime.datetime, datetime.datetime]] = []
                while start + length <= closed_until and len(new) < MAX_NEW_PERIODS:
                    period = (_at(start), _at(start + length))
                    if period not in known:
                        new.append(period)
                    start += length
                again = [p for p in sorted(known) if late_since < p[1] <= now]
                due += [(tenant, customer, row["subscription_id"], *p) for p in new + again]
        return due
