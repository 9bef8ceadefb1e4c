"""Refunds in the ledger (contract-billing.md § Ledger, notes-billing.md § Refunds): an
admin's refund of a paid invoice goes through the provider and books debit `refunds`,
credit `cash`; a refund made at the provider's side is booked from its `charge.refunded`
event; each refund is booked once (its event delivered, replayed or not), never more
than the invoice paid, and the ledger's invariants hold.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import stripe

from apex_testkit import FakePayments, eventually
from billing_tests.client import (
    MANAGE,
    READ,
    BillingUser,
    MakeUser,
    bearer,
    error_of,
    ledger_check,
    ledger_of,
    sdk,
    subscribe,
)

REFUNDS = pytest.mark.bvj(
    segment="early", goal="Money given back is given back once, and the books say so",
    mrr=20000, scenario="001#100",
)  # fmt: skip
pytestmark = [REFUNDS, pytest.mark.L2, pytest.mark.L3]


@pytest.fixture
async def paid(
    billing_client: httpx.AsyncClient, make_billing_user: MakeUser, fake_payments: FakePayments
) -> tuple[BillingUser, stripe.Invoice]:
    """A tenant on `early` and its first invoice, paid 2900 at the provider."""
    owner = await make_billing_user(permissions=(READ, MANAGE))
    response = await subscribe(billing_client, owner, "early")
    assert response.status_code == 200, response.text
    provider = sdk(fake_payments)
    subscription = provider.v1.subscriptions.list().data[0]
    invoice = provider.v1.invoices.retrieve(str(subscription.latest_invoice))
    assert (invoice.status, invoice.amount_paid) == ("paid", 2900)
    return owner, invoice


async def refund(
    client: httpx.AsyncClient, admin_token: str, invoice_id: str, amount: Any
) -> httpx.Response:
    body = {"invoice_id": invoice_id, "amount": amount}
    return await client.post("/admin/billing/refunds", json=body, headers=bearer(admin_token))


def refunds_acknowledged(fake_payments: FakePayments) -> int:
    """How many `charge.refunded` events the platform acknowledged (200)."""
    return len(
        {
            d.event_id
            for d in fake_payments.deliveries
            if d.event_type == "charge.refunded" and d.status == 200
        }
    )


def refund_rows(ledger: list[tuple[str, str, int, int]]) -> list[tuple[str, int, int]]:
    return [(account, d, c) for tx, account, d, c in ledger if tx.startswith("refund:")]


async def test_an_admin_refund_goes_through_the_provider_and_is_booked_once(
    billing_client: httpx.AsyncClient,
    billing_webhooks: str,
    paid: tuple[BillingUser, stripe.Invoice],
    fake_payments: FakePayments,
    billing_db: Any,
    admin_token: str,
) -> None:
    owner, invoice = paid
    response = await refund(billing_client, admin_token, str(invoice.id), 1000)
    assert response.status_code == 200, response.text
    assert response.json()["refunded"] == 1000
    provider = sdk(fake_payments)
    charge = provider.v1.charges.retrieve(str(invoice["charge"]))
    assert charge.amount_refunded == 1000
    assert provider.v1.refunds.retrieve(response.json()["refund"]).amount == 1000
    # The provider's charge.refunded event for it is acknowledged and books nothing more.
    await eventually(
        lambda: _async(refunds_acknowledged(fake_payments) == 1),
        timeout=30,
        message="the charge.refunded event acknowledged",
    )
    assert refund_rows(await ledger_of(billing_db, owner)) == [
        ("refunds", 1000, 0),
        ("cash", 0, 1000),
    ]
    # More than is left (1900) is refused, and changes nothing anywhere.
    over = await refund(billing_client, admin_token, str(invoice.id), 1901)
    assert over.status_code == 422, over.text
    assert error_of(over) == "refund_exceeds_paid"
    assert provider.v1.charges.retrieve(str(invoice["charge"])).amount_refunded == 1000
    assert len(refund_rows(await ledger_of(billing_db, owner))) == 2
    # The rest is refundable; the invariants hold.
    rest = await refund(billing_client, admin_token, str(invoice.id), 1900)
    assert rest.status_code == 200, rest.text
    assert rest.json()["refunded"] == 2900
    check = await ledger_check(billing_client, admin_token)
    assert check["ok"] is True, check
    assert check["invariants"]["refunded_within_paid"]["ok"] is True


async def test_a_refund_made_at_the_provider_is_booked_once_from_its_event(
    billing_client: httpx.AsyncClient,
    billing_webhooks: str,
    paid: tuple[BillingUser, stripe.Invoice],
    fake_payments: FakePayments,
    billing_db: Any,
    admin_token: str,
) -> None:
    owner, invoice = paid
    sdk(fake_payments).v1.refunds.create(params={"charge": str(invoice["charge"]), "amount": 500})

    async def booked() -> bool:
        return refund_rows(await ledger_of(billing_db, owner)) == [
            ("refunds", 500, 0),
            ("cash", 0, 500),
        ]

    await eventually(booked, timeout=30, message="the provider's refund booked")
    # A replay of the event books nothing twice.
    events = sdk(fake_payments).v1.events.list(params={"type": "charge.refunded"}).data
    fake_payments.resend(events[0].id)
    await eventually(
        lambda: _async(
            sum(
                1
                for d in fake_payments.deliveries
                if d.event_id == events[0].id and d.status == 200
            )
            == 2
        ),
        timeout=30,
        message="the replay acknowledged",
    )
    assert await booked()
    assert (await ledger_check(billing_client, admin_token))["ok"] is True


async def test_refunds_need_the_admin_token_and_a_paid_invoice(
    billing_client: httpx.AsyncClient,
    paid: tuple[BillingUser, stripe.Invoice],
    fake_payments: FakePayments,
    billing_db: Any,
    admin_token: str,
) -> None:
    owner, invoice = paid
    body = {"invoice_id": str(invoice.id), "amount": 100}
    as_owner = await billing_client.post("/admin/billing/refunds", json=body, headers=owner.headers)
    assert as_owner.status_code == 401, as_owner.text
    unknown = await refund(billing_client, admin_token, "in_unknown", 100)
    assert unknown.status_code == 404, unknown.text
    assert error_of(unknown) == "unknown_invoice"
    for amount in (0, -5, 10.5, "100"):
        bad = await refund(billing_client, admin_token, str(invoice.id), amount)
        assert bad.status_code == 422, bad.text
    assert sdk(fake_payments).v1.charges.retrieve(str(invoice["charge"])).amount_refunded == 0
    assert refund_rows(await ledger_of(billing_db, owner)) == []


async def _async(value: bool) -> bool:
    return value
