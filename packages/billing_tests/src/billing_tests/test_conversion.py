"""001#96 free-to-paid conversion: a tenant starts on `free`; subscribing with a card that
pays makes a provider subscription whose first invoice is paid, the paid tier's limits
published for every service at once, and the payment booked in the ledger; a declined
card changes nothing (no subscription at the provider, still free, no entitlements, no
ledger entry). Expectations come from contract-billing.md's plan table.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from apex_testkit import FakePayments, RedisNamespace
from billing_tests.client import (
    MANAGE,
    READ,
    BillingUser,
    MakeUser,
    entitlements_of,
    error_of,
    ledger_of,
    sdk,
    subscribe,
    subscription_of,
)

CONVERSION = pytest.mark.bvj(
    segment="free", goal="A free tenant converts to paid in one step, and the tier unlocks",
    mrr=30000, scenario="001#96",
)  # fmt: skip
pytestmark = [CONVERSION, pytest.mark.L2, pytest.mark.L3]

# contract-billing.md § Plans.
EARLY_LIMITS = {
    "requests_per_minute": 600,
    "tokens_per_day": 2_000_000,
    "seats": 5,
    "ws_connections": 20,
}
FREE_LIMITS = {
    "requests_per_minute": 60,
    "tokens_per_day": 100_000,
    "seats": 1,
    "ws_connections": 2,
}


@pytest.fixture
async def owner(make_billing_user: MakeUser) -> BillingUser:
    return await make_billing_user(permissions=(READ, MANAGE))


@pytest.mark.L4
async def test_the_plans_are_the_contracts_table(billing_client: httpx.AsyncClient) -> None:
    response = await billing_client.get("/v1/billing/plans")
    assert response.status_code == 200, response.text
    table = {p["plan"]: (p["price"], p["limits"]) for p in response.json()["plans"]}
    assert table == {
        "free": ({"amount": 0, "currency": "usd"}, FREE_LIMITS),
        "early": ({"amount": 2900, "currency": "usd"}, EARLY_LIMITS),
        "mid": (
            {"amount": 9900, "currency": "usd"},
            {
                "requests_per_minute": 3000,
                "tokens_per_day": 20_000_000,
                "seats": 25,
                "ws_connections": 200,
            },
        ),
        "enterprise": (
            {"amount": 49900, "currency": "usd"},
            {
                "requests_per_minute": 30000,
                "tokens_per_day": 500_000_000,
                "seats": 1000,
                "ws_connections": 5000,
            },
        ),
    }


async def test_a_paying_card_converts_the_tenant_and_unlocks_the_tier_everywhere(
    billing_client: httpx.AsyncClient,
    owner: BillingUser,
    fake_payments: FakePayments,
    billing_db: Any,
    billing_redis: Any,
    redis_namespace: RedisNamespace,
) -> None:
    before = await subscription_of(billing_client, owner)
    assert (before["plan"], before["status"], before["limits"]) == ("free", "none", FREE_LIMITS)
    response = await subscribe(billing_client, owner, "early")
    assert response.status_code == 200, response.text
    state = response.json()
    assert (state["plan"], state["status"], state["limits"]) == ("early", "active", EARLY_LIMITS)
    assert await subscription_of(billing_client, owner) == state
    # The provider has one active subscription to a 2900-cent monthly price, paid.
    provider = sdk(fake_payments)
    subscriptions = provider.v1.subscriptions.list().data
    assert [(s.status, s["items"]["data"][0]["price"]["unit_amount"]) for s in subscriptions] == [
        ("active", 2900)
    ]
    invoice = provider.v1.invoices.retrieve(str(subscriptions[0].latest_invoice))
    assert (invoice.status, invoice.amount_paid) == ("paid", 2900)
    # Every service reads the new limits at once.
    published = await entitlements_of(billing_redis, redis_namespace.prefix, owner)
    assert published == {
        "plan": "early",
        **{k: str(v) for k, v in EARLY_LIMITS.items()},
        **{f"upgrade_to:{k}": "mid" for k in EARLY_LIMITS},
    }
    # The payment is booked: cash in, revenue deferred.
    assert await ledger_of(billing_db, owner) == [
        (f"invoice:{invoice.id}", "cash", 2900, 0),
        (f"invoice:{invoice.id}", "deferred_revenue", 0, 2900),
    ]
    invoices = await billing_client.get("/v1/billing/invoices", headers=owner.headers)
    assert [i["amount_paid"] for i in invoices.json()["invoices"]] == [
        {"amount": 2900, "currency": "usd"}
    ]


@pytest.mark.L4
async def test_a_conversion_through_the_api_reports_the_paid_tier_at_once(
    billing_client: httpx.AsyncClient, owner: BillingUser, fake_payments: FakePayments
) -> None:
    """001#96 as a deployment shows it, through its API and the payment sandbox only (no
    database or Redis at L4): the tenant's state and limits before and after, the
    provider's subscription and paid first invoice, the platform's invoice. The local
    stack runs with APEX_PLAN_LIMITS off (notes-billing.md deviation 3: the other teams'
    L4 tests put several users and connections in plan-less tenants), so that auth, the
    gateway and agents then enforce the new limits is proven at L2/L3
    (`test_tier_enforcement.py`, `test_agent_budgets.py`)."""
    before = await subscription_of(billing_client, owner)
    assert (before["plan"], before["status"], before["limits"]) == ("free", "none", FREE_LIMITS)
    response = await subscribe(billing_client, owner, "early")
    assert response.status_code == 200, response.text
    try:
        state = response.json()
        assert (state["plan"], state["status"]) == ("early", "active")
        assert (state["limits"], state["cancel_at_period_end"]) == (EARLY_LIMITS, False)
        assert await subscription_of(billing_client, owner) == state
        # The sandbox (reset for this test) has this one subscription, its invoice paid.
        provider = sdk(fake_payments)
        [subscription] = provider.v1.subscriptions.list().data
        assert subscription.status == "active"
        assert subscription["items"]["data"][0]["price"]["unit_amount"] == 2900
        invoice = provider.v1.invoices.retrieve(str(subscription.latest_invoice))
        assert (invoice.status, invoice.amount_paid) == ("paid", 2900)
        invoices = await billing_client.get("/v1/billing/invoices", headers=owner.headers)
        assert invoices.status_code == 200, invoices.text
        assert [i["amount_paid"] for i in invoices.json()["invoices"]] == [
            {"amount": 2900, "currency": "usd"}
        ]
    finally:
        # Leave no renewing subscription on a deployment: it ends with the period.
        cancel = "/v1/billing/subscription/cancel"
        ended = await billing_client.post(cancel, headers=owner.headers)
        assert ended.status_code == 200, ended.text


@pytest.mark.parametrize(
    ("card", "decline_code"),
    [
        ("pm_card_chargeDeclined", "generic_decline"),
        ("pm_card_chargeCustomerFail", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
    ],
)
async def test_a_declined_card_changes_nothing(
    billing_client: httpx.AsyncClient,
    owner: BillingUser,
    fake_payments: FakePayments,
    billing_db: Any,
    billing_redis: Any,
    redis_namespace: RedisNamespace,
    card: str,
    decline_code: str,
) -> None:
    response = await subscribe(billing_client, owner, "mid", card=card)
    assert response.status_code == 402, response.text
    assert error_of(response) == "payment_declined"
    assert decline_code in response.json()["detail"]
    state = await subscription_of(billing_client, owner)
    assert (state["plan"], state["status"]) == ("free", "none")
    assert sdk(fake_payments).v1.subscriptions.list().data == []
    assert await entitlements_of(billing_redis, redis_namespace.prefix, owner) == {}
    assert await ledger_of(billing_db, owner) == []
    # The tenant can still convert with a card that pays.
    again = await subscribe(billing_client, owner, "mid")
    assert again.status_code == 200, again.text
    assert again.json()["plan"] == "mid"


async def test_converting_needs_billing_manage_and_happens_once(
    billing_client: httpx.AsyncClient,
    make_billing_user: MakeUser,
    owner: BillingUser,
    fake_payments: FakePayments,
) -> None:
    reader = await make_billing_user(permissions=(READ,))
    refused = await subscribe(billing_client, reader, "early")
    assert refused.status_code == 403, refused.text
    assert sdk(fake_payments).v1.customers.list().data == []
    first = await subscribe(billing_client, owner, "early")
    assert first.status_code == 200, first.text
    second = await subscribe(billing_client, owner, "mid")
    assert second.status_code == 409, second.text
    assert error_of(second) == "already_subscribed"
    assert len(sdk(fake_payments).v1.subscriptions.list().data) == 1
    assert (await subscription_of(billing_client, owner))["plan"] == "early"


@pytest.mark.parametrize(
    "body",
    [
        {"plan": "platinum", "payment_method": "pm_card_visa"},
        {"plan": "free", "payment_method": "pm_card_visa"},
        {"plan": "early", "payment_method": "pm_card_visa", "trial_days": 1.5},
        {"plan": "early"},
        {"plan": "early", "payment_method": "pm_card_visa", "coupon": "FREE"},
    ],
    ids=["unknown-plan", "free", "float", "no-card", "unknown-field"],
)
async def test_a_bad_request_is_422_and_makes_nothing_at_the_provider(
    billing_client: httpx.AsyncClient,
    owner: BillingUser,
    fake_payments: FakePayments,
    body: dict[str, object],
) -> None:
    response = await billing_client.post(
        "/v1/billing/subscription", json=body, headers=owner.headers
    )
    assert response.status_code == 422, response.text
    assert sdk(fake_payments).v1.customers.list().data == []
    assert (await subscription_of(billing_client, owner))["plan"] == "free"
