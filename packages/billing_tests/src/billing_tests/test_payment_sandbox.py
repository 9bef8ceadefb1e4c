"""002#14 payment gateway sandbox, end to end at L3: apex.billing and the kit's
Stripe-compatible `fake_payments` as processes, the provider's webhooks delivered to the
billing process. One tenant's life: a conversion charges its card, an upgrade charges the
prorated difference at once, an admin refund and a refund made at the provider's side
each give money back, a cancellation ends the tier. After each step the provider's state
is read with the official `stripe` SDK and the platform's through its API, its ledger and
Redis; every event reaches the platform and is acknowledged, and the ledger's invariants
hold (contract-billing.md, notes-billing.md).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from apex_testkit import FakePayments, RedisNamespace, eventually
from billing_tests.client import (
    MANAGE,
    READ,
    MakeUser,
    bearer,
    entitlements_of,
    ledger_check,
    ledger_of,
    sdk,
    subscribe,
    subscription_of,
)

SANDBOX = pytest.mark.bvj(
    segment="platform", goal="Payments work end to end against a provider sandbox",
    mrr=25000, scenario="002#14",
)  # fmt: skip
pytestmark = [SANDBOX, pytest.mark.L3]


def acknowledged(fake_payments: FakePayments) -> bool:
    """Whether every event at the provider was delivered to the platform and answered 200."""
    events = sdk(fake_payments).v1.events.list(params={"limit": 100}).data
    ok = {d.event_id for d in fake_payments.deliveries if d.status == 200}
    return bool(events) and all(event.id in ok for event in events)


async def test_a_tenants_payments_end_to_end(
    billing_client: httpx.AsyncClient,
    billing_webhooks: str,
    make_billing_user: MakeUser,
    fake_payments: FakePayments,
    billing_db: Any,
    billing_redis: Any,
    redis_namespace: RedisNamespace,
    admin_token: str,
) -> None:
    async def settled() -> bool:
        return acknowledged(fake_payments)

    owner = await make_billing_user(permissions=(READ, MANAGE))
    provider = sdk(fake_payments)
    # A charge: free to early, the card charged 2900.
    converted = await subscribe(billing_client, owner, "early")
    assert converted.status_code == 200, converted.text
    subscription = provider.v1.subscriptions.list().data[0]
    first = provider.v1.invoices.retrieve(str(subscription.latest_invoice))
    charge = provider.v1.charges.retrieve(str(first["charge"]))
    assert (charge.status, charge.amount_captured, charge.paid) == ("succeeded", 2900, True)
    await eventually(settled, timeout=30, message="the conversion's events acknowledged")
    assert (await subscription_of(billing_client, owner))["plan"] == "early"

    # A subscription change: early to mid, the prorated difference invoiced and paid now.
    changed = await billing_client.post(
        "/v1/billing/subscription/change", json={"plan": "mid"}, headers=owner.headers
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["plan"] == "mid"
    subscription = provider.v1.subscriptions.retrieve(subscription.id)
    assert subscription["items"]["data"][0]["price"]["unit_amount"] == 9900
    upgrade = provider.v1.invoices.retrieve(str(subscription.latest_invoice))
    assert upgrade.id != first.id
    assert upgrade.status == "paid"
    published = await entitlements_of(billing_redis, redis_namespace.prefix, owner)
    assert published["plan"] == "mid"
    await eventually(settled, timeout=30, message="the upgrade's events acknowledged")

    # Refunds: 1000 of the first invoice by the platform, 400 at the provider's side.
    refunded = await billing_client.post(
        "/admin/billing/refunds",
        json={"invoice_id": str(first.id), "amount": 1000},
        headers=bearer(admin_token),
    )
    assert refunded.status_code == 200, refunded.text
    provider.v1.refunds.create(params={"charge": charge.id, "amount": 400})
    assert provider.v1.charges.retrieve(charge.id).amount_refunded == 1400
    await eventually(settled, timeout=30, message="the refunds' events acknowledged")

    # Cancel at period end, then the provider ends it: the tenant is free again.
    cancel = await billing_client.post("/v1/billing/subscription/cancel", headers=owner.headers)
    assert cancel.status_code == 200, cancel.text
    assert provider.v1.subscriptions.retrieve(subscription.id).cancel_at_period_end is True
    provider.v1.subscriptions.cancel(subscription.id)

    async def ended() -> bool:
        plan: str = (await subscription_of(billing_client, owner))["plan"]
        return plan == "free"

    await eventually(ended, timeout=30, message="the provider's cancellation applied")
    await eventually(settled, timeout=30, message="every event acknowledged")

    # The books: both invoices paid in, 1400 refunded, each once; the invariants hold.
    ledger = await ledger_of(billing_db, owner)
    cash_in = sum(d for tx, account, d, _ in ledger if account == "cash")
    cash_out = sum(c for tx, account, _, c in ledger if account == "cash")
    assert cash_in == 2900 + int(upgrade.amount_paid)
    assert cash_out == 1400
    assert sum(d for tx, account, d, _ in ledger if account == "refunds") == 1400
    check = await ledger_check(billing_client, admin_token)
    assert check["ok"] is True, check
