"""001#98 payment webhook processing: apex.billing takes the provider's events only with a
valid, recent `Stripe-Signature` (a forged or stale one is 400 and changes nothing),
applies each event id once (a replay answers `duplicate` and books nothing twice), and
ends in the provider's state whatever order events arrive in.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from apex_testkit import FakePayments, Platform, RedisNamespace, eventually, stripe_signature
from billing_tests.client import (
    MANAGE,
    READ,
    BillingUser,
    MakeUser,
    change,
    entitlements_of,
    error_of,
    ledger_of,
    sdk,
    status_of,
    subscribe,
    subscription_of,
)

WEBHOOKS = pytest.mark.bvj(
    segment="enterprise", goal="Payments the provider reports are applied once, and only theirs",
    mrr=20000, scenario="001#98",
)  # fmt: skip
pytestmark = [WEBHOOKS, pytest.mark.L2, pytest.mark.L3]


@pytest.fixture
async def owner(make_billing_user: MakeUser) -> BillingUser:
    return await make_billing_user(permissions=(READ, MANAGE))


def signed(payload: bytes, secret: str, *, at: int | None = None) -> dict[str, str]:
    """The headers of a delivery of `payload` signed with `secret` at `at` (default now)."""
    stamp = int(time.time()) if at is None else at
    return {
        "stripe-signature": stripe_signature(payload, secret, stamp),
        "content-type": "application/json",
    }


def event_of(fake_payments: FakePayments, kind: str) -> bytes:
    """The latest event of type `kind` at the provider, as the provider would send it."""
    events = sdk(fake_payments).v1.events.list(params={"type": kind, "limit": 1}).data
    assert events, f"no {kind} event at the provider"
    return json.dumps(events[0].to_dict(recursive=True)).encode()


def all_delivered(fake_payments: FakePayments) -> bool:
    """Whether every event at the provider was delivered and acknowledged (the endpoint
    takes every event type)."""
    events = sdk(fake_payments).v1.events.list(params={"limit": 100}).data
    acknowledged = {d.event_id for d in fake_payments.deliveries if d.status == 200}
    return bool(events) and all(event.id in acknowledged for event in events)


async def processed_events(db: Any) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM billing_events")
    return count


async def test_a_forged_or_stale_signature_is_400_and_changes_nothing(
    billing_client: httpx.AsyncClient,
    owner: BillingUser,
    fake_payments: FakePayments,
    billing_db: Any,
) -> None:
    assert (await subscribe(billing_client, owner, "early")).status_code == 200
    provider = sdk(fake_payments)
    provider.v1.subscriptions.cancel(provider.v1.subscriptions.list().data[0].id)
    payload = event_of(fake_payments, "customer.subscription.deleted")
    attempts = {
        "forged": signed(payload, "whsec_not_the_providers"),
        "stale": signed(payload, fake_payments.webhook_secret, at=int(time.time()) - 301),
        "unsigned": {"content-type": "application/json"},
    }
    for name, headers in attempts.items():
        response = await billing_client.post(
            "/v1/billing/webhooks", content=payload, headers=headers
        )
        assert response.status_code == 400, (name, response.text)
        assert error_of(response) == "invalid_signature", name
    tampered = payload.replace(b'"canceled"', b'"active"')
    response = await billing_client.post(
        "/v1/billing/webhooks",
        content=tampered,
        headers=signed(payload, fake_payments.webhook_secret),
    )
    assert response.status_code == 400, response.text
    assert await processed_events(billing_db) == 0
    # The tenant's subscription is as it was: the provider's cancel was never taken in.
    assert (await subscription_of(billing_client, owner))["status"] == "active"


async def test_a_replayed_event_is_applied_once(
    billing_client: httpx.AsyncClient,
    owner: BillingUser,
    fake_payments: FakePayments,
    billing_db: Any,
    billing_redis: Any,
    redis_namespace: RedisNamespace,
) -> None:
    assert (await subscribe(billing_client, owner, "early")).status_code == 200
    provider = sdk(fake_payments)
    provider.v1.subscriptions.cancel(provider.v1.subscriptions.list().data[0].id)
    payload = event_of(fake_payments, "customer.subscription.deleted")
    answers = []
    for _ in range(3):
        response = await billing_client.post(
            "/v1/billing/webhooks",
            content=payload,
            headers=signed(payload, fake_payments.webhook_secret),
        )
        assert response.status_code == 200, response.text
        answers.append(response.json()["duplicate"])
    assert answers == [False, True, True]
    assert await processed_events(billing_db) == 1
    state = await subscription_of(billing_client, owner)
    assert (state["plan"], state["status"]) == ("free", "canceled")
    published = await entitlements_of(billing_redis, redis_namespace.prefix, owner)
    assert published["plan"] == "free"
    # Replays of the payment itself book nothing twice.
    paid = event_of(fake_payments, "invoice.paid")
    for _ in range(2):
        response = await billing_client.post(
            "/v1/billing/webhooks", content=paid, headers=signed(paid, fake_payments.webhook_secret)
        )
        assert response.status_code == 200, response.text
    assert [row[1:] for row in await ledger_of(billing_db, owner)] == [
        ("cash", 2900, 0),
        ("deferred_revenue", 0, 2900),
    ]


async def test_events_delivered_in_reverse_end_in_the_providers_state(
    billing_client: httpx.AsyncClient,
    billing_webhooks: str,
    owner: BillingUser,
    fake_payments: FakePayments,
    billing_redis: Any,
    redis_namespace: RedisNamespace,
) -> None:
    fake_payments.hold_webhooks()
    assert (await subscribe(billing_client, owner, "early")).status_code == 200
    # At the provider: the end of the subscription, after its creation and payment.
    provider = sdk(fake_payments)
    subscription = provider.v1.subscriptions.list().data[0]
    provider.v1.subscriptions.cancel(subscription.id)
    fake_payments.release_webhooks(order="reverse")

    async def settled() -> bool:
        return all_delivered(fake_payments)

    await eventually(settled, timeout=30, message="every held event delivered")
    state = await subscription_of(billing_client, owner)
    assert (state["plan"], state["status"]) == ("free", "canceled")
    published = await entitlements_of(billing_redis, redis_namespace.prefix, owner)
    assert published["plan"] == "free"


async def test_a_delivery_the_platform_cannot_process_is_retried_by_the_provider(
    billing_client: httpx.AsyncClient,
    billing_webhooks: str,
    owner: BillingUser,
    fake_payments: FakePayments,
    billing_db: Any,
) -> None:
    fake_payments.set_webhook_backoff(0.05, 0.2)
    assert (await subscribe(billing_client, owner, "early")).status_code == 200

    async def delivered() -> bool:
        return all_delivered(fake_payments)

    await eventually(delivered, timeout=30, message="the subscription's events delivered")
    # The provider fails the platform's lookups: its next delivery's processing fails,
    # nothing is recorded, and the provider's retry applies it.
    processed = await processed_events(billing_db)
    provider = sdk(fake_payments)
    fake_payments.hold_webhooks()
    provider.v1.subscriptions.cancel(provider.v1.subscriptions.list().data[0].id)
    fake_payments.fail_next(500, times=6)  # the SDK's own retries included
    fake_payments.release_webhooks()

    async def canceled() -> bool:
        return await status_of(billing_client, owner) == "canceled"

    await eventually(canceled, timeout=30, message="the retried delivery applied")
    failed = [d for d in fake_payments.deliveries if d.event_type.endswith(".deleted")]
    # Each failed processing took three of the six failures (the lookup and the SDK's two
    # retries of it): two deliveries failed, the third was applied.
    assert [d.status for d in failed] == [503, 503, 200]
    assert await processed_events(billing_db) == processed + 1


async def test_a_subscription_event_during_a_plan_change_does_not_undo_it(
    clean_platform: Platform,
    billing_client: httpx.AsyncClient,
    billing_webhooks: str,
    owner: BillingUser,
    fake_payments: FakePayments,
) -> None:
    assert (await subscribe(billing_client, owner, "mid")).status_code == 200

    async def delivered() -> bool:
        return all_delivered(fake_payments)

    await eventually(delivered, timeout=30, message="the subscription's events delivered")
    # An event about the subscription, waiting at the provider: a webhook that makes
    # apex.billing fetch the subscription (its plan still mid).
    provider = sdk(fake_payments)
    subscription = provider.v1.subscriptions.list().data[0].id
    fake_payments.hold_webhooks()
    provider.v1.subscriptions.update(subscription, params={"metadata": {"note": "meanwhile"}})
    # The change's first provider request fails and the SDK retries it a second later:
    # for that second the change is under way and its state not recorded. The held event's
    # delivery and the subscription fetch it makes must fit in it on a loaded machine.
    slow_retry = {"APEX_PAYMENTS_RETRY_DELAY": "1"}
    async with clean_platform.client("billing", instance=1, **slow_retry) as changing_client:
        fake_payments.fail_next(500)
        changing = asyncio.create_task(change(changing_client, owner, "early"))

        async def failed_once() -> bool:
            return fake_payments.faults_left == 0

        await eventually(failed_once, timeout=30, message="the change's first request failed")
        fake_payments.release_webhooks()
        state = await changing
    assert state["plan"] == "early"
    await eventually(delivered, timeout=30, message="every event delivered")
    assert (await subscription_of(billing_client, owner))["plan"] == "early"
