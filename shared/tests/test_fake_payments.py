"""The payments fake, held to the official `stripe` SDKs: Python and Node.

Objects parse into the SDK's types and errors raise its exception classes; idempotency
keys replay or refuse as Stripe documents; the test payment methods succeed, decline,
require authentication, or attach and fail later; refunds stay within what was paid;
webhooks are signed so that `stripe.Webhook.construct_event` accepts them (and refuses a
tampered or stale one), retried until acknowledged, and deliverable in reverse; a test
clock drives trials, renewals, dunning and cancellation; a prorated upgrade charges the
remaining time to the unit. Expected amounts are computed here from Stripe's rules, not
read back from the fake.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import stripe

from apex_testkit import FakePayments, stripe_signature, wait_for
from apex_testkit._fakes import payments as payments_fake
from apex_testkit._fakes import start

# 2026-01-01T00:00:00Z: where the test clocks start.
NEW_YEAR = 1767225600
DAY = 86400


def sdk(fake: FakePayments, key: str | None = None) -> stripe.StripeClient:
    """The official client, its API base pointed at the fake, its own retries off."""
    return stripe.StripeClient(
        key or fake.api_key, base_addresses={"api": fake.base_url}, max_network_retries=0
    )


class Receiver:
    """A webhook endpoint on 127.0.0.1: records every delivery, answers the scripted
    statuses first, then 200."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        # Set: each delivery is answered only once it is set (cleared: the next waits).
        self.answer: threading.Event | None = None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                if receiver.answer is not None:
                    receiver.answer.wait(timeout=30)
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def customer_paying_with(client: stripe.StripeClient, card: str, **params: Any) -> Any:
    customer = client.v1.customers.create(params=params)
    pm = client.v1.payment_methods.attach(card, params={"customer": customer.id})
    client.v1.customers.update(
        customer.id, params={"invoice_settings": {"default_payment_method": pm.id}}
    )
    return customer, pm


def monthly_price(client: stripe.StripeClient, amount: int) -> Any:
    product = client.v1.products.create(params={"name": f"Plan {amount}"})
    return client.v1.prices.create(
        params={
            "currency": "usd",
            "unit_amount": amount,
            "product": product.id,
            "recurring": {"interval": "month"},
        }
    )


def test_objects_parse_into_the_sdks_types_and_the_log_has_the_requests(fake_payments):
    client = sdk(fake_payments)
    customer = client.v1.customers.create(
        params={"email": "ana@example.com", "metadata": {"plan": "pro"}}
    )
    assert isinstance(customer, stripe.Customer)
    assert customer.id.startswith("cus_")
    assert customer.metadata.to_dict() == {"plan": "pro"}
    pm = client.v1.payment_methods.attach("pm_card_visa", params={"customer": customer.id})
    assert isinstance(pm, stripe.PaymentMethod)
    assert (pm.customer, pm.card.brand, pm.card.last4) == (customer.id, "visa", "4242")
    intent = client.v1.payment_intents.create(
        params={
            "amount": 2000,
            "currency": "usd",
            "customer": customer.id,
            "payment_method": pm.id,
            "confirm": True,
        }
    )
    assert isinstance(intent, stripe.PaymentIntent)
    assert (intent.status, intent.amount_received) == ("succeeded", 2000)
    charge = client.v1.charges.retrieve(intent.latest_charge)
    assert isinstance(charge, stripe.Charge)
    assert (charge.paid, charge.amount_captured) == (True, 2000)
    assert client.v1.customers.retrieve(customer.id).email == "ana@example.com"
    # The form body as Stripe's clients encode it, bracketed keys included.
    create = next(r for r in fake_payments.requests if r.path == "/v1/customers")
    assert create.form == {"email": "ana@example.com", "metadata[plan]": "pro"}
    assert create.headers["authorization"] == f"Bearer {fake_payments.api_key}"


def test_errors_raise_the_sdks_exception_classes(fake_payments):
    client = sdk(fake_payments)
    with pytest.raises(stripe.AuthenticationError):
        sdk(fake_payments, "sk_test_wrong").v1.customers.list()
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.customers.retrieve("cus_nope")
    assert (missing.value.http_status, missing.value.code) == (404, "resource_missing")
    with pytest.raises(stripe.InvalidRequestError) as small:
        client.v1.payment_intents.create(params={"amount": 49, "currency": "usd"})
    assert (small.value.code, small.value.param) == ("amount_too_small", "amount")
    with pytest.raises(stripe.InvalidRequestError) as currency:
        client.v1.payment_intents.create(params={"amount": 100, "currency": "xyz"})
    assert currency.value.param == "currency"
    fake_payments.fail_next(429)
    assert fake_payments.faults_left == 1
    with pytest.raises(stripe.RateLimitError):
        client.v1.customers.list()
    assert fake_payments.faults_left == 0
    fake_payments.fail_next(500)
    with pytest.raises(stripe.APIError):
        client.v1.customers.list()
    assert client.v1.customers.list().data == []  # nothing was made along the way


def test_an_idempotency_key_replays_the_first_answer_or_refuses_other_parameters(
    fake_payments,
):
    client = sdk(fake_payments)
    params = {"amount": 1500, "currency": "eur"}
    first = client.v1.payment_intents.create(params=params, options={"idempotency_key": "k-1"})
    again = client.v1.payment_intents.create(params=params, options={"idempotency_key": "k-1"})
    assert again.id == first.id
    with pytest.raises(stripe.IdempotencyError) as other:
        client.v1.payment_intents.create(
            params={"amount": 1600, "currency": "eur"}, options={"idempotency_key": "k-1"}
        )
    assert "same parameters" in str(other.value.user_message)
    with pytest.raises(stripe.IdempotencyError):
        client.v1.customers.create(options={"idempotency_key": "k-1"})
    created = [e for e in client.v1.events.list().data if e.type == "payment_intent.created"]
    assert [e.data.object.id for e in created] == [first.id]  # one intent, one event
    assert client.v1.customers.list().data == []
    replayed = [r for r in fake_payments.requests if r.path == "/v1/payment_intents"][1]
    assert replayed.status == 200


def test_the_test_cards_succeed_decline_authenticate_or_fail_later(fake_payments):
    client = sdk(fake_payments)
    customer = client.v1.customers.create()
    with pytest.raises(stripe.CardError) as declined:
        client.v1.payment_methods.attach("pm_card_chargeDeclined", params={"customer": customer.id})
    assert (declined.value.code, declined.value.error.decline_code) == (
        "card_declined",
        "generic_decline",
    )
    with pytest.raises(stripe.CardError) as funds:
        client.v1.payment_intents.create(
            params={
                "amount": 700,
                "currency": "usd",
                "payment_method": "pm_card_chargeDeclinedInsufficientFunds",
                "confirm": True,
            }
        )
    assert funds.value.error.decline_code == "insufficient_funds"
    failed = client.v1.payment_intents.retrieve(funds.value.error.payment_intent["id"])
    assert failed.status == "requires_payment_method"
    assert failed.last_payment_error.decline_code == "insufficient_funds"
    # Authentication: asked for on session, a decline off session.
    on = client.v1.payment_intents.create(
        params={
            "amount": 700,
            "currency": "usd",
            "payment_method": "pm_card_authenticationRequired",
            "confirm": True,
        }
    )
    assert (on.status, on.next_action.type) == ("requires_action", "use_stripe_sdk")
    with pytest.raises(stripe.CardError) as off:
        client.v1.payment_intents.create(
            params={
                "amount": 700,
                "currency": "usd",
                "payment_method": "pm_card_authenticationRequired",
                "confirm": True,
                "off_session": True,
            }
        )
    assert off.value.code == "authentication_required"
    # Fails later: attaches, then every charge declines.
    later = client.v1.payment_methods.attach(
        "pm_card_chargeCustomerFail", params={"customer": customer.id}
    )
    with pytest.raises(stripe.CardError):
        client.v1.payment_intents.create(
            params={
                "amount": 700,
                "currency": "usd",
                "customer": customer.id,
                "payment_method": later.id,
                "confirm": True,
            }
        )
    charges = [e for e in client.v1.events.list().data if e.type == "charge.succeeded"]
    assert charges == []


def test_refunds_stay_within_what_was_paid(fake_payments):
    client = sdk(fake_payments)
    intent = client.v1.payment_intents.create(
        params={
            "amount": 2000,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": True,
        }
    )
    part = client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 500})
    assert isinstance(part, stripe.Refund)
    assert part.amount == 500
    with pytest.raises(stripe.InvalidRequestError) as over:
        client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 1501})
    assert over.value.param == "amount"
    rest = client.v1.refunds.create(params={"payment_intent": intent.id})
    assert rest.amount == 1500
    charge = client.v1.charges.retrieve(intent.latest_charge)
    assert (charge.amount_refunded, charge.refunded) == (2000, True)
    with pytest.raises(stripe.InvalidRequestError) as again:
        client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 1})
    assert again.value.code == "charge_already_refunded"


def test_webhooks_are_signed_for_the_sdks_check_and_a_tampered_one_fails(fake_payments, receiver):
    fake_payments.add_endpoint(receiver.url, events=("customer.created",))
    customer = sdk(fake_payments).v1.customers.create(params={"email": "w@example.com"})
    wait_for(lambda: receiver.received, timeout=10, message="a webhook arrives")
    headers, body = receiver.received[0]
    event = stripe.Webhook.construct_event(
        body.decode(), headers["stripe-signature"], fake_payments.webhook_secret
    )
    assert (event.type, event.data.object.id) == ("customer.created", customer.id)
    assert len(receiver.received) == 1  # only the enabled type
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(
            body.decode().replace("w@example.com", "x@example.com"),
            headers["stripe-signature"],
            fake_payments.webhook_secret,
        )
    stale = stripe_signature(body, fake_payments.webhook_secret, 1_000_000_000)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body.decode(), stale, fake_payments.webhook_secret)


def test_a_failed_delivery_is_retried_until_acknowledged(fake_payments, receiver):
    fake_payments.set_webhook_backoff(0.01, 0.05)
    fake_payments.add_endpoint(receiver.url, events=("customer.created",))
    receiver.statuses = [500, 503]
    sdk(fake_payments).v1.customers.create()
    wait_for(lambda: len(receiver.received) == 3, timeout=10, message="three attempts")
    attempts = [(d.attempt, d.status) for d in fake_payments.deliveries]
    assert attempts == [(1, 500), (2, 503), (3, 200)]
    assert len({json.loads(body)["id"] for _, body in receiver.received}) == 1


def two_events_due_and_the_first_delivery_under_way(
    fake_payments: FakePayments, receiver: Receiver
) -> None:
    """Two events due at once, the endpoint holding its answer to the first."""
    receiver.answer = threading.Event()
    fake_payments.add_endpoint(receiver.url, events=("customer.created",))
    client = sdk(fake_payments)
    fake_payments.hold_webhooks()
    client.v1.customers.create()
    client.v1.customers.create()
    fake_payments.release_webhooks()
    wait_for(lambda: receiver.received, timeout=10, message="the first delivery under way")


def the_next_tests_event_is_delivered_alone(
    fake_payments: FakePayments, receiver: Receiver
) -> None:
    """After a reset: a new endpoint's event is delivered and the only one logged, and
    the first test's second event was not delivered before it (it was dropped)."""
    fake_payments.add_endpoint(receiver.url, events=("customer.created",))
    made = sdk(fake_payments).v1.customers.create(params={"name": "next test"}).id
    wait_for(lambda: fake_payments.deliveries, timeout=10, message="the next test's event")
    assert [(d.attempt, d.status) for d in fake_payments.deliveries] == [(1, 200)]
    assert len(receiver.received) == 2
    assert receiver.events()[-1]["data"]["object"]["id"] == made


def test_a_reset_returns_once_the_delivery_under_way_was_answered(fake_payments, receiver):
    """What a webhook under way tells the platform must be done before the kit wipes the
    platform's state for the next test (the worker resets its fakes before its servers),
    else it lands in that test's state (an L3 billing test found an event of the test
    before processed); no other delivery starts meanwhile."""
    two_events_due_and_the_first_delivery_under_way(fake_payments, receiver)
    resetting = threading.Thread(target=fake_payments.reset)
    resetting.start()
    resetting.join(timeout=0.5)  # it would have returned at once
    assert resetting.is_alive(), "the reset did not wait for the delivery under way"
    receiver.answer.set()
    resetting.join(timeout=10)
    assert not resetting.is_alive()
    assert fake_payments.deliveries == []
    the_next_tests_event_is_delivered_alone(fake_payments, receiver)


def test_a_reset_that_stops_waiting_for_a_hanging_delivery_drops_it(
    fake_payments, receiver, monkeypatch
):
    """An endpoint that answers after the reset stopped waiting: its answer is neither
    logged nor retried in the next test, and the sender goes on with the next test's
    events. It stopped for good when the events due with that delivery were gone from its
    queue (two tests' renewals at L3 were never booked)."""
    monkeypatch.setattr(payments_fake, "SETTLE_TIMEOUT", 0.05)
    two_events_due_and_the_first_delivery_under_way(fake_payments, receiver)
    fake_payments.reset()
    assert receiver.answer is not None
    receiver.answer.set()
    the_next_tests_event_is_delivered_alone(fake_payments, receiver)


def test_held_events_can_be_delivered_in_reverse_and_resent(fake_payments, receiver):
    fake_payments.add_endpoint(receiver.url, events=("customer.created",))
    fake_payments.hold_webhooks()
    client = sdk(fake_payments)
    made = [client.v1.customers.create(params={"name": n}).id for n in ("a", "b", "c")]
    assert receiver.received == []
    fake_payments.release_webhooks(order="reverse")
    wait_for(lambda: len(receiver.received) == 3, timeout=10, message="three deliveries")
    assert [e["data"]["object"]["id"] for e in receiver.events()] == made[::-1]
    first = receiver.events()[-1]["id"]
    fake_payments.resend(first)
    wait_for(lambda: len(receiver.received) == 4, timeout=10, message="the replay")
    assert receiver.events()[-1]["id"] == first


def test_a_test_clock_drives_a_trial_renewals_dunning_and_cancellation(fake_payments):
    client = sdk(fake_payments)
    fake_payments.set_dunning((3, 5))
    clock = client.v1.test_helpers.test_clocks.create(params={"frozen_time": NEW_YEAR})
    customer, _ = customer_paying_with(client, "pm_card_chargeCustomerFail", test_clock=clock.id)
    price = monthly_price(client, 4900)
    sub = client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": price.id}], "trial_period_days": 14}
    )
    assert isinstance(sub, stripe.Subscription)
    assert sub.status == "trialing"
    assert sub.trial_end == NEW_YEAR + 14 * DAY
    advance = client.v1.test_helpers.test_clocks.advance
    # The trial ends: the renewal's charge fails, the subscription is past due.
    advance(clock.id, params={"frozen_time": NEW_YEAR + 14 * DAY + 60})
    assert client.v1.subscriptions.retrieve(sub.id).status == "past_due"
    cycle = client.v1.invoices.list(params={"subscription": sub.id}).data[0]
    assert (cycle.billing_reason, cycle.amount_due, cycle.attempt_count) == (
        "subscription_cycle",
        4900,
        1,
    )
    assert cycle.next_payment_attempt == NEW_YEAR + (14 + 3) * DAY
    # Retried after 3 days, then 5 more; after the last failure, canceled.
    advance(clock.id, params={"frozen_time": NEW_YEAR + (14 + 3 + 5) * DAY + 60})
    ended = client.v1.subscriptions.retrieve(sub.id)
    assert (ended.status, ended.ended_at) == ("canceled", NEW_YEAR + (14 + 3 + 5) * DAY)
    cycle = client.v1.invoices.retrieve(cycle.id)
    assert (cycle.status, cycle.attempt_count, cycle.amount_paid) == ("open", 3, 0)
    # The subscription's events, oldest first (on the clock's time).
    kinds = [
        e.type
        for e in client.v1.events.list(params={"limit": 100}).data[::-1]
        if e.type.startswith(("invoice.", "customer.subscription."))
    ]
    assert kinds.count("invoice.payment_failed") == 3
    assert kinds[-1] == "customer.subscription.deleted"


def test_error_if_incomplete_keeps_no_subscription_when_the_first_payment_fails(fake_payments):
    client = sdk(fake_payments)
    customer, _ = customer_paying_with(client, "pm_card_chargeCustomerFail")
    price = monthly_price(client, 2900)
    with pytest.raises(stripe.CardError) as declined:
        client.v1.subscriptions.create(
            params={
                "customer": customer.id,
                "items": [{"price": price.id}],
                "payment_behavior": "error_if_incomplete",
            }
        )
    assert declined.value.error.decline_code == "generic_decline"
    assert client.v1.subscriptions.list(params={"customer": customer.id}).data == []
    # Without it, the subscription stays `incomplete` with its invoice open.
    kept = client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": price.id}]}
    )
    assert kept.status == "incomplete"


def test_renewals_are_paid_and_an_upgrade_is_prorated_to_the_unit(fake_payments):
    client = sdk(fake_payments)
    clock = client.v1.test_helpers.test_clocks.create(params={"frozen_time": NEW_YEAR})
    customer, _ = customer_paying_with(client, "pm_card_visa", test_clock=clock.id)
    basic, pro = monthly_price(client, 1000), monthly_price(client, 3000)
    sub = client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": basic.id}]}
    )
    assert sub.status == "active"
    assert sub.current_period_end == NEW_YEAR + 31 * DAY  # January
    # Ten days into January, an upgrade invoiced at once for the 21 days left.
    client.v1.test_helpers.test_clocks.advance(
        clock.id, params={"frozen_time": NEW_YEAR + 10 * DAY}
    )
    item = sub["items"]["data"][0]
    client.v1.subscriptions.update(
        sub.id,
        params={
            "items": [{"id": item.id, "price": pro.id}],
            "proration_behavior": "always_invoice",
        },
    )
    upgrade = client.v1.invoices.list(params={"subscription": sub.id}).data[0]
    credit = -round(1000 * 21 / 31)  # 677: halves never occur here
    charge = round(3000 * 21 / 31)  # 2032
    assert [line.amount for line in upgrade.lines.data] == [credit, charge]
    assert (upgrade.billing_reason, upgrade.amount_paid, upgrade.status) == (
        "subscription_update",
        credit + charge,
        "paid",
    )
    # February renews at the new price.
    client.v1.test_helpers.test_clocks.advance(
        clock.id, params={"frozen_time": NEW_YEAR + 31 * DAY + 60}
    )
    february = client.v1.invoices.list(params={"subscription": sub.id}).data[0]
    assert (february.billing_reason, february.amount_paid) == ("subscription_cycle", 3000)
    renewed = client.v1.subscriptions.retrieve(sub.id)
    assert (renewed.status, renewed.current_period_end) == ("active", NEW_YEAR + 59 * DAY)


def test_an_invoice_item_is_added_to_the_next_renewal_invoice(fake_payments):
    client = sdk(fake_payments)
    clock = client.v1.test_helpers.test_clocks.create(params={"frozen_time": NEW_YEAR})
    customer, _ = customer_paying_with(client, "pm_card_visa", test_clock=clock.id)
    other, _ = customer_paying_with(client, "pm_card_visa", test_clock=clock.id)
    sub = client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": monthly_price(client, 1000).id}]}
    )
    usage = client.v1.invoice_items.create(
        params={
            "customer": customer.id,
            "subscription": sub.id,
            "amount": 437,
            "currency": "usd",
            "description": "Usage: llm",
            "metadata": {"line": "llm"},
        }
    )
    assert isinstance(usage, stripe.InvoiceItem)
    assert (usage.amount, usage.subscription) == (437, sub.id)
    assert usage.metadata.to_dict() == {"line": "llm"}
    with pytest.raises(stripe.InvalidRequestError):  # another customer's subscription
        client.v1.invoice_items.create(
            params={"customer": other.id, "subscription": sub.id, "amount": 1, "currency": "usd"}
        )
    client.v1.test_helpers.test_clocks.advance(
        clock.id, params={"frozen_time": NEW_YEAR + 31 * DAY + 60}
    )
    february = client.v1.invoices.list(params={"subscription": sub.id}).data[0]
    assert [(line.amount, line.description) for line in february.lines.data] == [
        (437, "Usage: llm"),
        (1000, "1 x " + sub["items"]["data"][0].price.product),
    ]
    assert (february.billing_reason, february.amount_paid) == ("subscription_cycle", 1437)


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
def test_the_fake_serves_from_a_thread_and_from_a_process(apex_run, process):
    fake = start(apex_run, "payments", process=process)
    try:
        client = sdk(fake)
        made = client.v1.customers.create(params={"email": "p@example.com"})
        assert client.v1.customers.retrieve(made.id).email == "p@example.com"
        fake.reset()
        with pytest.raises(stripe.InvalidRequestError):
            client.v1.customers.retrieve(made.id)  # a reset forgets every object
    finally:
        fake.close()


def test_the_node_stripe_sdk_accepts_the_fake(fake_payments, receiver):
    """A second, independent client: the official Node SDK (its own form encoding, error
    classes and webhook check). `nox -s selftest` installs it (NODE_PATH)."""
    node = shutil.which("node")
    found = node and subprocess.run(
        [node, "-e", "require.resolve('stripe')"], capture_output=True, check=False
    )
    if not found or found.returncode != 0:
        pytest.fail(
            "node with the npm package stripe on NODE_PATH is needed: run tools/setup.sh "
            "(installs node and npm), then `nox -s selftest` (installs the package)"
        )
    fake_payments.add_endpoint(receiver.url, events=("customer.created",))
    sdk(fake_payments).v1.customers.create(params={"email": "node@example.com"})
    wait_for(lambda: receiver.received, timeout=10, message="a webhook arrives")
    headers, body = receiver.received[0]
    script = Path(__file__).with_name("node_stripe_client.cjs")
    env = {
        **os.environ,
        "FAKE_URL": fake_payments.url,
        "FAKE_KEY": fake_payments.api_key,
        "WEBHOOK_BODY": body.decode(),
        "WEBHOOK_SIGNATURE": headers["stripe-signature"],
        "WEBHOOK_SECRET": fake_payments.webhook_secret,
    }
    done = subprocess.run(
        [node, str(script)], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["customer"] == ["customer", {"plan": "team"}]
    assert seen["intent"] == ["succeeded", 1234]
    assert seen["replayed"] is True
    assert seen["errors"] == {
        "declined": ["StripeCardError", "card_declined", "generic_decline"],
        "idempotency": "StripeIdempotencyError",
        "missing": ["StripeInvalidRequestError", "resource_missing"],
        "auth": "StripeAuthenticationError",
    }
    assert seen["webhook"] == ["customer.created", "node@example.com"]
    assert seen["tampered"] == "StripeSignatureVerificationError"
