"""001#99 subscription lifecycle on a provider test clock: renewal, upgrade (prorated and
invoiced at once), downgrade (credited to the next invoice), cancellation at the period's
end and its undoing. Amounts are Stripe's proration rule computed here (`prorated`), the
plan prices from contract-billing.md; every change reaches the ledger and the
entitlements.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from apex_testkit import FakePayments, RedisNamespace, eventually
from billing_tests.client import (
    MANAGE,
    READ,
    BillingUser,
    MakeUser,
    change,
    entitlements_of,
    error_of,
    ledger_check,
    ledger_of,
    prorated,
    sdk,
    status_of,
    subscribe,
    subscription_of,
)

LIFECYCLE = pytest.mark.bvj(
    segment="mid", goal="Plans change, renew and end as the customer chose, billed to the cent",
    mrr=15000, scenario="001#99",
)  # fmt: skip
pytestmark = [LIFECYCLE, pytest.mark.L2, pytest.mark.L3]

NEW_YEAR = 1767225600  # 2026-01-01T00:00:00Z
DAY = 86400
JANUARY = 31 * DAY


@pytest.fixture
async def owner(make_billing_user: MakeUser) -> BillingUser:
    return await make_billing_user(permissions=(READ, MANAGE))


@pytest.fixture
def clock(fake_payments: FakePayments) -> str:
    """A provider test clock at 2026-01-01 for the tenant's customer."""
    return str(sdk(fake_payments).v1.test_helpers.test_clocks.create(
        params={"frozen_time": NEW_YEAR}
    ).id)  # fmt: skip


def advance(fake_payments: FakePayments, clock: str, to: int) -> None:
    sdk(fake_payments).v1.test_helpers.test_clocks.advance(clock, params={"frozen_time": to})


async def test_an_upgrade_is_prorated_and_paid_at_once(
    billing_client: httpx.AsyncClient,
    owner: BillingUser,
    fake_payments: FakePayments,
    clock: str,
    billing_db: Any,
    billing_redis: Any,
    redis_namespace: RedisNamespace,
    admin_token: str,
) -> None:
    assert (await subscribe(billing_client, owner, "early", test_clock=clock)).status_code == 200
    advance(fake_payments, clock, NEW_YEAR + 10 * DAY)
    state = await change(billing_client, owner, "mid")
    assert (state["plan"], state["status"]) == ("mid", "active")
    left = JANUARY - 10 * DAY
    net = prorated(9900, left, JANUARY) - prorated(2900, left, JANUARY)
    assert net == 4741  # 6706 - 1965 (a half rounds up): the 21 days left of January
    booked = [row for row in await ledger_of(billing_db, owner) if row[1] == "cash"]
    assert [row[2] for row in booked] == [2900, net]
    published = await entitlements_of(billing_redis, redis_namespace.prefix, owner)
    assert published["plan"] == "mid"
    assert (await ledger_check(billing_client, admin_token))["ok"] is True


async def test_a_downgrade_credits_the_next_invoice(
    billing_client: httpx.AsyncClient,
    billing_webhooks: str,
    owner: BillingUser,
    fake_payments: FakePayments,
    clock: str,
    billing_db: Any,
) -> None:
    assert (await subscribe(billing_client, owner, "mid", test_clock=clock)).status_code == 200
    advance(fake_payments, clock, NEW_YEAR + 25 * DAY)
    state = await change(billing_client, owner, "early")
    assert state["plan"] == "early"
    # Nothing is charged now.
    assert [row[2] for row in await ledger_of(billing_db, owner) if row[1] == "cash"] == [9900]
    # February's invoice: early's month, less the unused mid time, plus early's rest.
    advance(fake_payments, clock, NEW_YEAR + JANUARY + 60)
    left = JANUARY - 25 * DAY
    expected = 2900 - prorated(9900, left, JANUARY) + prorated(2900, left, JANUARY)
    assert expected == 1545  # 2900 - 1916 + 561

    async def renewed() -> list[int]:
        rows = await ledger_of(billing_db, owner)
        cash = [row[2] for row in rows if row[1] == "cash"]
        return cash if len(cash) == 2 else []

    cash = await eventually(renewed, timeout=30, message="February's invoice booked")
    assert cash == [9900, expected]


async def test_cancel_at_period_end_keeps_the_tier_until_then_and_can_be_undone(
    billing_client: httpx.AsyncClient,
    billing_webhooks: str,
    owner: BillingUser,
    fake_payments: FakePayments,
    clock: str,
    billing_redis: Any,
    redis_namespace: RedisNamespace,
) -> None:
    assert (await subscribe(billing_client, owner, "early", test_clock=clock)).status_code == 200
    cancel = await billing_client.post("/v1/billing/subscription/cancel", headers=owner.headers)
    assert cancel.status_code == 200, cancel.text
    assert (cancel.json()["plan"], cancel.json()["cancel_at_period_end"]) == ("early", True)
    resume = await billing_client.post("/v1/billing/subscription/resume", headers=owner.headers)
    assert resume.json()["cancel_at_period_end"] is False
    # Canceled again; at the period's end the provider ends it and the tier goes.
    await billing_client.post("/v1/billing/subscription/cancel", headers=owner.headers)
    advance(fake_payments, clock, NEW_YEAR + JANUARY + 60)

    async def ended() -> bool:
        return await status_of(billing_client, owner) == "canceled"

    await eventually(ended, timeout=30, message="the subscription ended")
    state = await subscription_of(billing_client, owner)
    assert (state["plan"], state["limits"]["seats"]) == ("free", 1)
    published = await entitlements_of(billing_redis, redis_namespace.prefix, owner)
    assert published["plan"] == "free"
    # Nothing left to change.
    again = await billing_client.post(
        "/v1/billing/subscription/change", json={"plan": "mid"}, headers=owner.headers
    )
    assert again.status_code == 409, again.text
    assert error_of(again) == "no_subscription"


async def test_a_renewal_is_booked_and_a_failed_one_keeps_the_tier_while_dunning(
    billing_client: httpx.AsyncClient,
    billing_webhooks: str,
    owner: BillingUser,
    fake_payments: FakePayments,
    clock: str,
    billing_db: Any,
) -> None:
    assert (await subscribe(billing_client, owner, "early", test_clock=clock)).status_code == 200
    advance(fake_payments, clock, NEW_YEAR + JANUARY + 60)

    async def renewed() -> bool:
        rows = await ledger_of(billing_db, owner)
        return len([row for row in rows if row[1] == "cash"]) == 2

    await eventually(renewed, timeout=30, message="February booked")
    # The card starts failing: March's renewal fails, the subscription is past due and
    # keeps its tier while the provider retries.
    provider = sdk(fake_payments)
    customer = str(provider.v1.subscriptions.list().data[0].customer)
    failing = provider.v1.payment_methods.attach(
        "pm_card_chargeCustomerFail", params={"customer": customer}
    )
    provider.v1.customers.update(
        customer, params={"invoice_settings": {"default_payment_method": failing.id}}
    )
    advance(fake_payments, clock, NEW_YEAR + JANUARY + 28 * DAY + 60)

    async def past_due() -> bool:
        return await status_of(billing_client, owner) == "past_due"

    await eventually(past_due, timeout=30, message="the subscription is past due")
    assert (await subscription_of(billing_client, owner))["plan"] == "early"
    assert len([r for r in await ledger_of(billing_db, owner) if r[1] == "cash"]) == 2
