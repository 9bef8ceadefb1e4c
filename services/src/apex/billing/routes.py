"""apex.billing's HTTP routes (JSON; errors ``{"error", "detail"}``; contract-billing.md).

- ``GET /v1/billing/plans``: the plan table.
- ``GET /v1/billing/subscription`` (``billing:read``): the tenant's plan, status, limits.
- ``POST /v1/billing/subscription {plan, payment_method, trial_days?, test_clock?}``
  (``billing:manage``): free to paid; 402 ``payment_declined`` leaves the tenant on free.
- ``POST /v1/billing/subscription/change {plan}``, ``.../cancel``, ``.../resume``
  (``billing:manage``).
- ``GET /v1/billing/invoices`` (``billing:read``): the tenant's paid invoices.
- ``GET /v1/billing/usage?from&to`` (``billing:read``): metered usage by kind, agent and
  model, priced (apex.billing.metering).
- ``POST /v1/billing/webhooks``: the provider's events (signature only).
- ``POST /admin/billing/usage-invoice {tenant, from, to}``: a period's usage invoice
  (apex.billing.usage_invoices: late usage corrected); ``POST
  /admin/billing/schedule/run``: one pass of the schedule (apex.billing.schedule);
  ``GET /admin/billing/usage/check?tenant&from&to``: the aggregates against the raw events.
- ``POST /admin/billing/recognize {date}``, ``POST /admin/billing/refunds {invoice_id,
  amount}``, ``GET /admin/billing/ledger/check``,
  ``GET /admin/config``, ``GET /metrics`` (admin token).
"""

from __future__ import annotations

import datetime
import uuid
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from apex.billing.ledger import check
from apex.billing.metering import period_view
from apex.billing.metrics import CONTENT_TYPE
from apex.billing.recognition import recognise
from apex.billing.service import BillingService
from apex.billing.settings import SERVICE
from apex.billing.subscriptions import LIVE
from apex.billing.usage_invoices import invoice_period
from apex.billing.webhooks import verify
from apex.common.http import ApiError, bearer_token, require_admin_token, require_json_body
from apex.common.shared_config import config_report
from apex.data.callers import Caller

__all__ = ["MANAGE", "READ", "router"]

router = APIRouter()

READ: Final = "billing:read"
MANAGE: Final = "billing:manage"


def service_of(request: Request) -> BillingService:
    """The running service (503 while it starts or stops)."""
    service = request.app.state.service
    if not isinstance(service, BillingService):
        raise ApiError(503, "unavailable", "the billing service is starting or stopping")
    return service


Service = Annotated[BillingService, Depends(service_of)]


async def caller_of(request: Request, service: Service) -> Caller:
    """The caller, from its context token (audience apex-billing)."""
    return await service.verifier.caller(bearer_token(request))


CallerDep = Annotated[Caller, Depends(caller_of)]
Name = Annotated[str, Field(min_length=1, max_length=100)]


class SubscribeIn(BaseModel):
    """Free to paid: the plan, a payment method of the provider, an optional trial."""

    model_config = ConfigDict(extra="forbid", strict=True)

    plan: Name
    payment_method: Annotated[str, Field(min_length=1, max_length=255)]
    trial_days: Annotated[int, Field(ge=0, le=730)] = 0
    # Test mode only (a test key): the provider's test clock the customer lives on.
    test_clock: Annotated[str, Field(min_length=1, max_length=255)] | None = None


class ChangeIn(BaseModel):
    """Another paid plan."""

    model_config = ConfigDict(extra="forbid", strict=True)

    plan: Name


class RefundIn(BaseModel):
    """A paid invoice and how much of it to refund (minor units)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    invoice_id: Annotated[str, Field(min_length=1, max_length=255)]
    amount: Annotated[int, Field(gt=0)]


class RecognizeIn(BaseModel):
    """The day whose end revenue is recognised through (ISO date)."""

    model_config = ConfigDict(extra="forbid")

    date: datetime.date


def _period(since: datetime.datetime, until: datetime.datetime) -> None:
    """A usage period: aware, whole seconds (ClickHouse's precision), ``from`` before ``to``."""
    for name, value in (("from", since), ("to", until)):
        if value.tzinfo is None:
            raise ApiError(422, "invalid_period", f"{name} must carry a time zone")
        if value.microsecond:
            raise ApiError(422, "invalid_period", f"{name} must be whole seconds")
    if since >= until:
        raise ApiError(422, "invalid_period", "from must be before to")


class PeriodIn(BaseModel):
    """A tenant's usage period ``[from, to)``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    tenant: uuid.UUID
    since: datetime.datetime = Field(alias="from")
    until: datetime.datetime = Field(alias="to")


From = Annotated[datetime.datetime, Query(alias="from")]
To = Annotated[datetime.datetime, Query(alias="to")]


@router.get("/v1/billing/plans")
async def plans(service: Service) -> dict[str, Any]:
    """The plan table, cheapest first."""
    table = sorted(service.settings.plans.values(), key=lambda plan: plan.price)
    return {"plans": [plan.view() for plan in table]}


@router.get("/v1/billing/subscription")
async def subscription(caller: CallerDep, service: Service) -> dict[str, Any]:
    """The tenant's plan, status and limits."""
    caller.require(READ)
    return await service.subscriptions.state(caller.tenant_id)


@router.post("/v1/billing/subscription", dependencies=[Depends(require_json_body)])
async def subscribe(body: SubscribeIn, caller: CallerDep, service: Service) -> dict[str, Any]:
    """Free to paid: the subscription's first invoice paid, or nothing changed (402)."""
    caller.require(MANAGE)
    try:
        state = await service.subscriptions.subscribe(
            caller.tenant_id,
            body.plan,
            body.payment_method,
            trial_days=body.trial_days,
            test_clock=body.test_clock,
        )
    except ApiError as exc:
        if exc.status == 402:
            service.metrics.subscriptions.labels("declined").inc()
        raise
    service.metrics.subscriptions.labels("subscribed").inc()
    return state


@router.post("/v1/billing/subscription/change", dependencies=[Depends(require_json_body)])
async def change(body: ChangeIn, caller: CallerDep, service: Service) -> dict[str, Any]:
    """Upgrade (prorated, invoiced now) or downgrade (credited to the next invoice)."""
    caller.require(MANAGE)
    before = (await service.subscriptions.state(caller.tenant_id))["plan"]
    state = await service.subscriptions.change(caller.tenant_id, body.plan)
    if state["plan"] != before:
        plans = service.subscriptions
        upgraded = plans.plan(state["plan"]).price > plans.plan(before).price
        service.metrics.subscriptions.labels("upgraded" if upgraded else "downgraded").inc()
    return state


@router.post("/v1/billing/subscription/cancel")
async def cancel(caller: CallerDep, service: Service) -> dict[str, Any]:
    """End the subscription at the end of its period."""
    caller.require(MANAGE)
    state = await service.subscriptions.cancel(caller.tenant_id, cancel=True)
    service.metrics.subscriptions.labels("canceled").inc()
    return state


@router.post("/v1/billing/subscription/resume")
async def resume(caller: CallerDep, service: Service) -> dict[str, Any]:
    """Undo a cancellation before the period ends."""
    caller.require(MANAGE)
    state = await service.subscriptions.cancel(caller.tenant_id, cancel=False)
    service.metrics.subscriptions.labels("resumed").inc()
    return state


@router.get("/v1/billing/invoices")
async def invoices(caller: CallerDep, service: Service) -> dict[str, Any]:
    """The tenant's paid invoices, oldest first."""
    caller.require(READ)
    return {"invoices": await service.store.invoices(caller.tenant_id)}


@router.get("/v1/billing/usage")
async def usage(caller: CallerDep, service: Service, since: From, until: To) -> dict[str, Any]:
    """The tenant's metered usage of ``[from, to)`` by kind, agent and model, priced."""
    caller.require(READ)
    _period(since, until)
    lines = await service.metering.usage(caller.tenant_id, since, until)
    return period_view(caller.tenant_id, since, until, lines)


@router.post("/v1/billing/webhooks")
async def webhooks(request: Request, service: Service) -> dict[str, Any]:
    """A provider event: verified by its signature, applied once."""
    settings = service.settings
    try:
        event = verify(
            await request.body(),
            request.headers.get("stripe-signature"),
            settings.payments_webhook_secret,
            settings.webhook_tolerance,
        )
    except ApiError:
        service.metrics.webhooks.labels("rejected").inc()
        raise
    outcome = await service.webhooks.process(event)
    service.metrics.webhooks.labels("duplicate" if outcome["duplicate"] else "processed").inc()
    return outcome


def require_admin(request: Request, service: Service) -> None:
    """The admin routes (and /metrics) answer the platform's admin token only."""
    require_admin_token(request, service.settings.admin_token)


Admin = Depends(require_admin)


@router.post("/admin/billing/recognize", dependencies=[Admin, Depends(require_json_body)])
async def recognize(body: RecognizeIn, service: Service) -> dict[str, Any]:
    """Recognise revenue through the end of ``date``; how many transactions were booked."""
    return {"date": body.date.isoformat(), "booked": await recognise(service.store.pool, body.date)}


@router.post("/admin/billing/refunds", dependencies=[Admin, Depends(require_json_body)])
async def refund(body: RefundIn, service: Service) -> dict[str, Any]:
    """Refund part or all of a paid invoice through the provider, booked once."""
    return await service.refunds.refund(body.invoice_id, body.amount)


@router.get("/admin/billing/ledger/check", dependencies=[Admin])
async def ledger_check(service: Service) -> dict[str, Any]:
    """The ledger's invariants, each with its result."""
    async with service.store.pool.acquire() as conn:
        results = await check(conn)
    return {"ok": all(r["ok"] for r in results.values()), "invariants": results}


@router.post("/admin/billing/usage-invoice", dependencies=[Admin, Depends(require_json_body)])
async def usage_invoice(body: PeriodIn, service: Service) -> dict[str, Any]:
    """The tenant's usage invoice of the period: one line per kind, agent and model; with a
    live subscription, each priced line is added to its next provider invoice."""
    _period(body.since, body.until)
    lines = await service.metering.usage(body.tenant, body.since, body.until)
    document = period_view(body.tenant, body.since, body.until, lines)
    customer = await service.store.customer(body.tenant)
    row = await service.store.subscription(body.tenant)
    live = customer is not None and row is not None and row.status in LIVE
    document["subscription"] = row.subscription_id if live and row else None
    document["invoice_items"] = []
    if live and customer and row:
        document["invoice_items"], _ = await invoice_period(
            service.store.pool, service.subscriptions.provider, tenant=body.tenant,
            customer=customer, subscription=row.subscription_id, since=body.since,
            until=body.until, lines=lines,
        )  # fmt: skip
    return document


@router.post("/admin/billing/schedule/run", dependencies=[Admin])
async def run_schedule(service: Service) -> dict[str, Any]:
    """One pass of the schedule now: closed usage periods invoiced (late usage corrected)
    and revenue recognised through yesterday."""
    return await service.schedule.run_once()


@router.get("/admin/billing/usage/check", dependencies=[Admin])
async def usage_check(
    service: Service, tenant: Annotated[uuid.UUID, Query()], since: From, until: To
) -> dict[str, Any]:
    """The period's aggregates recomputed from the raw events, compared to the cent."""
    _period(since, until)
    return await service.metering.check(tenant, since, until)


@router.get("/admin/config", dependencies=[Admin])
async def config(service: Service) -> dict[str, Any]:
    """The shared settings this instance runs with (003: cross-service consistency)."""
    return config_report(SERVICE, service.settings)


@router.get("/metrics", dependencies=[Admin])
async def metrics(service: Service) -> Response:
    """The Prometheus text exposition of the service's metrics."""
    return Response(service.metrics.render(), media_type=CONTENT_TYPE)
