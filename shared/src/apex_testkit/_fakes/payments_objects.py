"""The objects of the payments fake, in the shapes of Stripe's API, and what happens to them.

:class:`Objects` holds customers, payment methods, payment intents, charges, refunds,
products, prices, subscriptions, invoices, test clocks and events, and applies Stripe's
rules to them: test payment methods that succeed, decline, require authentication or
attach and then fail every charge (`pm_card_chargeCustomerFail`); refunds bounded by what
is left; subscriptions with trials, renewals, prorated changes and dunning, driven by test
clocks. Every change records its events (`customer.subscription.updated` carries
`previous_attributes`). Money is integer minor units throughout.

Where Stripe decides asynchronously, the fake decides at once and says so in its docs:
a test clock's advance is processed before the request answers (the clock answers
`advancing` and reads `ready` afterwards), and a customer without a test clock lives in
real time, where renewals never come due within a test.
"""

from __future__ import annotations

import calendar
import copy
import datetime
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["API_VERSION", "Objects", "StripeError", "public"]

API_VERSION: Final = "2026-10-28.endive"
CURRENCIES: Final = frozenset({"usd", "eur", "gbp", "cad", "aud", "jpy", "chf", "sek"})
# Stripe's smallest charge is 0.50 in the major unit of most currencies.
MINIMUM_AMOUNT: Final = 50
# Days after a failed renewal at which the invoice is tried again; after the last
# failure the subscription is canceled (Stripe's "cancel the subscription" setting).
DEFAULT_DUNNING_DAYS: Final = (3, 5, 7)
DAY: Final = 86400


class StripeError(Exception):
    """An error answer: HTTP status and Stripe's `error` object."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error: dict[str, Any] = {"type": kind, "message": message, **extra}
        if code is not None:
            self.error["code"] = code
            self.error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if param is not None:
            self.error["param"] = param

    def body(self) -> dict[str, Any]:
        return {"error": self.error}


def invalid(message: str, *, param: str | None = None, code: str | None = None) -> StripeError:
    return StripeError(400, "invalid_request_error", message, param=param, code=code)


def missing(kind: str, object_id: str, param: str = "id") -> StripeError:
    return StripeError(
        404,
        "invalid_request_error",
        f"No such {kind}: '{object_id}'",
        code="resource_missing",
        param=param,
    )


@dataclass(frozen=True)
class Card:
    """A test card: what charging it does (succeed, decline, authenticate, fail_later)."""

    brand: str
    last4: str
    outcome: str
    decline_code: str | None = None


# Stripe's test PaymentMethod ids (docs.stripe.com/testing).
TEST_CARDS: Final = {
    "pm_card_visa": Card("visa", "4242", "succeed"),
    "pm_card_mastercard": Card("mastercard", "4444", "succeed"),
    "pm_card_chargeDeclined": Card("visa", "0002", "decline", "generic_decline"),
    "pm_card_chargeDeclinedInsufficientFunds": Card("visa", "9995", "decline", "insufficient_funds"),
    "pm_card_authenticationRequired": Card("visa", "3184", "authenticate"),
    "pm_card_chargeCustomerFail": Card("visa", "0341", "fail_later", "generic_decline"),
}
_DECLINE_MESSAGES: Final = {
    "generic_decline": "Your card was declined.",
    "insufficient_funds": "Your card has insufficient funds.",
}
_PREFIXES: Final = {
    "customer": "cus",
    "payment_method": "pm",
    "payment_intent": "pi",
    "charge": "ch",
    "refund": "re",
    "product": "prod",
    "price": "price",
    "subscription": "sub",
    "subscription_item": "si",
    "invoice": "in",
    "invoiceitem": "ii",
    "test_helpers.test_clock": "clock",
    "event": "evt",
    "webhook_endpoint": "we",
}


def new_id(kind: str) -> str:
    return f"{_PREFIXES[kind]}_{secrets.token_hex(12)}"


def integer(params: dict[str, Any], name: str, *, required: bool = False) -> int | None:
    """Parameter `name` as an integer (Stripe's 'Invalid integer' otherwise)."""
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise invalid(f"Missing required param: {name}.", param=name)
        return None
    try:
        number = int(str(value))
    except ValueError:
        raise invalid(f"Invalid integer: {value}", param=name) from None
    if number < 0:
        raise invalid(f"This value must be greater than or equal to 0 ({name}).", param=name)
    return number


def boolean(params: dict[str, Any], name: str) -> bool:
    value = params.get(name, "false")
    if value not in ("true", "false"):
        raise invalid(f"Invalid boolean: {value}", param=name)
    return bool(value == "true")


def required(params: dict[str, Any], name: str) -> Any:
    if params.get(name) in (None, ""):
        raise invalid(f"Missing required param: {name}.", param=name)
    return params[name]


def currency_of(params: dict[str, Any]) -> str:
    currency = str(required(params, "currency")).lower()
    if currency not in CURRENCIES:
        raise invalid(f"Invalid currency: {currency}.", param="currency")
    return currency


def metadata_of(params: dict[str, Any], current: dict[str, str] | None = None) -> dict[str, str]:
    given = params.get("metadata", {})
    if given == "":
        return {}
    if not isinstance(given, dict):
        raise invalid("Invalid hash", param="metadata")
    merged = dict(current or {})
    for key, value in given.items():
        if value == "":
            merged.pop(key, None)  # Stripe unsets a key sent empty
        else:
            merged[key] = str(value)
    return merged


def add_interval(at: int, interval: str, count: int) -> int:
    """`at` moved on by `count` intervals (calendar months and years, the day clamped)."""
    moment = datetime.datetime.fromtimestamp(at, datetime.UTC)
    if interval in ("day", "week"):
        return at + count * DAY * (7 if interval == "week" else 1)
    months = count * (12 if interval == "year" else 1)
    year, month = divmod(moment.month - 1 + months, 12)
    year, month = moment.year + year, month + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return int(moment.replace(year=year, month=month, day=day).timestamp())


class Objects:
    """Every object of one fake account, and the rules that change them."""

    def __init__(self, on_event: Callable[[dict[str, Any]], None]) -> None:
        self.on_event = on_event
        self.objects: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.dunning_days: tuple[int, ...] = DEFAULT_DUNNING_DAYS
        # Proration invoice items waiting for a subscription's next invoice.
        self.pending_items: dict[str, list[dict[str, Any]]] = {}
        self.request: dict[str, Any] = {"id": None, "idempotency_key": None}

    # -- storage and events ----------------------------------------------------------------

    def get(self, kind: str, object_id: Any, param: str = "id") -> dict[str, Any]:
        found = self.objects.get(str(object_id))
        if found is None or found["object"] != kind or found.get("deleted"):
            raise missing(kind.rsplit(".", 1)[-1], str(object_id), param)
        return found

    def add(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.objects[obj["id"]] = obj
        return obj

    def listing(self, kind: str, url: str, **filters: Any) -> dict[str, Any]:
        found = [
            o
            for o in self.objects.values()
            if o["object"] == kind
            and not o.get("deleted")
            and all(o.get(k) == v for k, v in filters.items() if v is not None)
        ]
        # Newest first; among objects of one second, the later made first.
        found.reverse()
        found.sort(key=lambda o: o.get("created", 0), reverse=True)
        return {"object": "list", "data": found, "has_more": False, "url": url}

    def emit(self, kind: str, obj: dict[str, Any], previous: dict[str, Any] | None = None) -> None:
        data: dict[str, Any] = {"object": public(obj)}
        if previous:
            data["previous_attributes"] = previous
        event = {
            "id": new_id("event"),
            "object": "event",
            "api_version": API_VERSION,
            "created": self.now(obj.get("customer") if obj["object"] != "customer" else obj["id"]),
            "data": data,
            "livemode": False,
            "pending_webhooks": 0,
            "request": dict(self.request),
            "type": kind,
        }
        self.events.append(event)
        self.add(event)
        self.on_event(event)

    def now(self, customer_id: Any = None) -> int:
        """The time of a customer: its test clock's frozen time, else real time."""
        customer = self.objects.get(str(customer_id)) if customer_id else None
        clock_id = customer.get("test_clock") if customer else None
        if clock_id:
            return int(self.objects[clock_id]["frozen_time"])
        return int(time.time())

    # -- customers and payment methods ---------------------------------------------------

    def create_customer(self, params: dict[str, Any]) -> dict[str, Any]:
        clock = params.get("test_clock")
        if clock:
            self.get("test_helpers.test_clock", clock, "test_clock")
        customer = self.add(
            {
                "id": new_id("customer"),
                "object": "customer",
                "balance": integer(params, "balance") or 0,
                "created": 0,
                "currency": None,
                "description": params.get("description"),
                "email": params.get("email"),
                "invoice_settings": {"default_payment_method": None},
                "livemode": False,
                "metadata": metadata_of(params),
                "name": params.get("name"),
                "test_clock": clock or None,
            }
        )
        customer["created"] = self.now(customer["id"])
        pm = params.get("payment_method")
        if pm:
            self.attach(pm, {"customer": customer["id"]})
        default = params.get("invoice_settings", {}).get("default_payment_method")
        if default:
            self._set_default(customer, default)
        self.emit("customer.created", customer)
        return customer

    def update_customer(self, customer_id: str, params: dict[str, Any]) -> dict[str, Any]:
        customer = self.get("customer", customer_id)
        previous: dict[str, Any] = {}
        for name in ("email", "name", "description"):
            if name in params:
                previous[name] = customer[name]
                customer[name] = params[name] or None
        if "metadata" in params:
            previous["metadata"] = customer["metadata"]
            customer["metadata"] = metadata_of(params, customer["metadata"])
        default = params.get("invoice_settings", {}).get("default_payment_method")
        if default is not None:
            previous["invoice_settings"] = dict(customer["invoice_settings"])
            self._set_default(customer, default)
        self.emit("customer.updated", customer, previous)
        return customer

    def _set_default(self, customer: dict[str, Any], pm_id: str) -> None:
        pm = self.get("payment_method", pm_id, "invoice_settings[default_payment_method]")
        if pm["customer"] != customer["id"]:
            raise invalid(
                f"The customer does not have a payment method with the ID {pm_id}. The payment "
                "method must be attached to the customer.",
                param="invoice_settings[default_payment_method]",
                code="resource_missing",
            )
        customer["invoice_settings"]["default_payment_method"] = pm_id

    def delete_customer(self, customer_id: str) -> dict[str, Any]:
        customer = self.get("customer", customer_id)
        for sub in list(self.objects.values()):
            if sub["object"] == "subscription" and sub["customer"] == customer_id:
                if sub["status"] not in ("canceled", "incomplete_expired"):
                    self.cancel_subscription(sub["id"])
        customer["deleted"] = True
        self.emit("customer.deleted", customer)
        return {"id": customer_id, "object": "customer", "deleted": True}

    def payment_method(self, pm_id: str, param: str = "payment_method") -> dict[str, Any]:
        """A stored payment method, or a fresh one made from a test card's id."""
        if pm_id in TEST_CARDS:
            card = TEST_CARDS[pm_id]
            return self.add(
                {
                    "id": new_id("payment_method"),
                    "object": "payment_method",
                    "billing_details": {"email": None, "name": None},
                    "card": {
                        "brand": card.brand,
                        "last4": card.last4,
                        "exp_month": 12,
                        "exp_year": datetime.datetime.now(datetime.UTC).year + 3,
                        "funding": "credit",
                        "country": "US",
                    },
                    "created": int(time.time()),
                    "customer": None,
                    "livemode": False,
                    "metadata": {},
                    "type": "card",
                    "_test_card": pm_id,
                }
            )
        return self.get("payment_method", pm_id, param)

    def attach(self, pm_id: str, params: dict[str, Any]) -> dict[str, Any]:
        customer = self.get("customer", required(params, "customer"), "customer")
        pm = self.payment_method(pm_id, "payment_method")
        if pm["customer"] not in (None, customer["id"]):
            raise invalid(
                "The payment method you provided has already been attached to a customer.",
                code="payment_method_unexpected_state",
            )
        card = TEST_CARDS[pm["_test_card"]]
        if card.outcome == "decline":  # attaching checks the card with its issuer
            raise self._card_declined(card, pm)
        pm["customer"] = customer["id"]
        self.emit("payment_method.attached", pm)
        return pm

    def detach(self, pm_id: str) -> dict[str, Any]:
        pm = self.get("payment_method", pm_id)
        if pm["customer"] is None:
            raise invalid(
                "The payment method you provided is not attached to a customer so detachment "
                "is impossible.",
                code="payment_method_unexpected_state",
            )
        customer = self.objects[pm["customer"]]
        if customer["invoice_settings"]["default_payment_method"] == pm_id:
            customer["invoice_settings"]["default_payment_method"] = None
        pm["customer"] = None
        self.emit("payment_method.detached", pm)
        return pm

    # -- payment intents, charges, refunds ------------------------------------------------

    def create_payment_intent(self, params: dict[str, Any]) -> dict[str, Any]:
        amount = integer(params, "amount", required=True)
        assert amount is not None
        if amount < MINIMUM_AMOUNT:
            raise invalid(
                "Amount must be at least 50 cents", param="amount", code="amount_too_small"
            )
        currency = currency_of(params)
        customer = params.get("customer")
        if customer:
            self.get("customer", customer, "customer")
        intent = self.add(
            {
                "id": new_id("payment_intent"),
                "object": "payment_intent",
                "amount": amount,
                "amount_received": 0,
                "cancellation_reason": None,
                "client_secret": None,
                "created": self.now(customer),
                "currency": currency,
                "customer": customer or None,
                "description": params.get("description"),
                "last_payment_error": None,
                "latest_charge": None,
                "livemode": False,
                "metadata": metadata_of(params),
                "next_action": None,
                "payment_method": None,
                "payment_method_types": ["card"],
                "status": "requires_payment_method",
            }
        )
        intent["client_secret"] = f"{intent['id']}_secret_{secrets.token_hex(8)}"
        if params.get("payment_method"):
            intent["payment_method"] = self._usable_method(intent, params["payment_method"])["id"]
            intent["status"] = "requires_confirmation"
        self.emit("payment_intent.created", intent)
        if boolean(params, "confirm"):
            self.confirm(intent["id"], {"off_session": params.get("off_session", "false")})
        return intent

    def _usable_method(self, intent: dict[str, Any], pm_id: str) -> dict[str, Any]:
        pm = self.payment_method(pm_id)
        if pm["customer"] is not None and pm["customer"] != intent["customer"]:
            raise invalid(
                f"The provided PaymentMethod {pm_id} belongs to another customer.",
                param="payment_method",
            )
        return pm

    def confirm(self, intent_id: str, params: dict[str, Any]) -> dict[str, Any]:
        intent = self.get("payment_intent", intent_id)
        if params.get("payment_method"):
            intent["payment_method"] = self._usable_method(intent, params["payment_method"])["id"]
        if intent["status"] in ("succeeded", "canceled", "processing"):
            raise invalid(
                f"You cannot confirm this PaymentIntent because it has a status of "
                f"{intent['status']}.",
                code="payment_intent_unexpected_state",
            )
        if intent["payment_method"] is None:
            raise invalid(
                "You cannot confirm this PaymentIntent because it's missing a payment method.",
                code="payment_intent_unexpected_state",
            )
        self._charge(intent, off_session=params.get("off_session") == "true")
        return intent

    def _charge(self, intent: dict[str, Any], *, off_session: bool) -> None:
        """Charge the intent's payment method; a failure raises the 402 Stripe gives."""
        pm = self.objects[intent["payment_method"]]
        card = TEST_CARDS[pm["_test_card"]]
        if card.outcome == "authenticate":
            if off_session:
                intent["status"] = "requires_payment_method"
                error = StripeError(
                    402,
                    "card_error",
                    "Your card was declined. This transaction requires authentication.",
                    code="authentication_required",
                    decline_code="authentication_required",
                )
                intent["last_payment_error"] = error.error
                error.error["payment_intent"] = public(intent)
                self.emit("payment_intent.payment_failed", intent)
                raise error
            intent["status"] = "requires_action"
            intent["next_action"] = {"type": "use_stripe_sdk", "use_stripe_sdk": {}}
            self.emit("payment_intent.requires_action", intent)
            return
        charge = self.add(
            {
                "id": new_id("charge"),
                "object": "charge",
                "amount": intent["amount"],
                "amount_captured": 0,
                "amount_refunded": 0,
                "captured": False,
                "created": self.now(intent["customer"]),
                "currency": intent["currency"],
                "customer": intent["customer"],
                "failure_code": None,
                "failure_message": None,
                "livemode": False,
                "metadata": dict(intent["metadata"]),
                "paid": False,
                "payment_intent": intent["id"],
                "payment_method": pm["id"],
                "refunded": False,
                "status": "pending",
            }
        )
        intent["latest_charge"] = charge["id"]
        if card.outcome in ("decline", "fail_later"):
            error = self._card_declined(card, pm)
            charge.update(
                status="failed", failure_code="card_declined", failure_message=error.error["message"]
            )
            intent["status"] = "requires_payment_method"
            intent["last_payment_error"] = dict(error.error)
            error.error["charge"] = charge["id"]
            error.error["payment_intent"] = public(intent)
            self.emit("charge.failed", charge)
            self.emit("payment_intent.payment_failed", intent)
            raise error
        charge.update(status="succeeded", paid=True, captured=True, amount_captured=charge["amount"])
        intent.update(status="succeeded", amount_received=intent["amount"], next_action=None)
        intent["last_payment_error"] = None
        self.emit("charge.succeeded", charge)
        self.emit("payment_intent.succeeded", intent)

    def _card_declined(self, card: Card, pm: dict[str, Any]) -> StripeError:
        code = card.decline_code or "generic_decline"
        return StripeError(
            402,
            "card_error",
            _DECLINE_MESSAGES.get(code, "Your card was declined."),
            code="card_declined",
            decline_code=code,
            payment_method=public(pm),
        )

    def cancel_payment_intent(self, intent_id: str, params: dict[str, Any]) -> dict[str, Any]:
        intent = self.get("payment_intent", intent_id)
        if intent["status"] in ("succeeded", "canceled"):
            raise invalid(
                f"You cannot cancel this PaymentIntent because it has a status of "
                f"{intent['status']}. Only a PaymentIntent with one of the following statuses "
                "may be canceled: requires_payment_method, requires_capture, "
                "requires_confirmation, requires_action, processing.",
                code="payment_intent_unexpected_state",
            )
        intent.update(status="canceled", cancellation_reason=params.get("cancellation_reason"))
        self.emit("payment_intent.canceled", intent)
        return intent

    def create_refund(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("payment_intent"):
            intent = self.get("payment_intent", params["payment_intent"], "payment_intent")
            if intent["latest_charge"] is None or intent["status"] != "succeeded":
                raise invalid(
                    f"This PaymentIntent ({intent['id']}) does not have a successful charge "
                    "to refund.",
                    param="payment_intent",
                )
            charge = self.objects[intent["latest_charge"]]
        else:
            charge = self.get("charge", required(params, "charge"), "charge")
        left = charge["amount_captured"] - charge["amount_refunded"]
        amount = integer(params, "amount")
        amount = left if amount is None else amount
        if left == 0:
            raise invalid(
                f"Charge {charge['id']} has already been refunded.",
                code="charge_already_refunded",
            )
        if amount <= 0 or amount > left:
            raise invalid(
                f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left})",
                param="amount",
            )
        refund = self.add(
            {
                "id": new_id("refund"),
                "object": "refund",
                "amount": amount,
                "charge": charge["id"],
                "created": self.now(charge["customer"]),
                "currency": charge["currency"],
                "metadata": metadata_of(params),
                "payment_intent": charge["payment_intent"],
                "reason": params.get("reason"),
                "status": "succeeded",
            }
        )
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount_captured"]
        self.emit("refund.created", refund)
        self.emit("charge.refunded", charge)
        return refund

    # -- products and prices --------------------------------------------------------------

    def create_product(self, params: dict[str, Any]) -> dict[str, Any]:
        product = self.add(
            {
                "id": params.get("id") or new_id("product"),
                "object": "product",
                "active": True,
                "created": int(time.time()),
                "description": params.get("description"),
                "livemode": False,
                "metadata": metadata_of(params),
                "name": required(params, "name"),
            }
        )
        self.emit("product.created", product)
        return product

    def create_price(self, params: dict[str, Any]) -> dict[str, Any]:
        currency = currency_of(params)
        unit_amount = integer(params, "unit_amount", required=True)
        if params.get("product_data"):
            product = self.create_product(params["product_data"])
        else:
            product = self.get("product", required(params, "product"), "product")
        recurring = params.get("recurring")
        if recurring is not None:
            interval = recurring.get("interval") if isinstance(recurring, dict) else None
            if interval not in ("day", "week", "month", "year"):
                raise invalid(
                    "Invalid recurring[interval]: must be one of day, week, month, or year",
                    param="recurring[interval]",
                )
            count = integer(recurring, "interval_count") or 1
            recurring = {"interval": interval, "interval_count": count, "usage_type": "licensed"}
        price = self.add(
            {
                "id": new_id("price"),
                "object": "price",
                "active": True,
                "created": int(time.time()),
                "currency": currency,
                "livemode": False,
                "lookup_key": params.get("lookup_key"),
                "metadata": metadata_of(params),
                "product": product["id"],
                "recurring": recurring,
                "type": "recurring" if recurring else "one_time",
                "unit_amount": unit_amount,
            }
        )
        self.emit("price.created", price)
        return price

    # -- subscriptions and invoices ---------------------------------------------------------

    def create_subscription(self, params: dict[str, Any]) -> dict[str, Any]:
        customer = self.get("customer", required(params, "customer"), "customer")
        items = params.get("items")
        if not isinstance(items, list) or not items:
            raise invalid("Missing required param: items.", param="items")
        if len(items) != 1:
            raise invalid("The fake supports one item per subscription.", param="items")
        price = self.get("price", required(items[0], "price"), "items[0][price]")
        if price["recurring"] is None:
            raise invalid(
                "The price specified is set to `type=one_time` but this field only accepts "
                "prices with `type=recurring`.",
                param="items[0][price]",
            )
        quantity = integer(items[0], "quantity") or 1
        now = self.now(customer["id"])
        trial_days = integer(params, "trial_period_days") or 0
        default_pm = params.get("default_payment_method")
        if default_pm:
            pm = self.get("payment_method", default_pm, "default_payment_method")
            if pm["customer"] != customer["id"]:
                raise invalid(
                    "The customer does not have a payment method with the ID "
                    f"{default_pm}. The payment method must be attached to the customer.",
                    param="default_payment_method",
                )
        end = now + trial_days * DAY if trial_days else self._period_end(price, now)
        sub_id = new_id("subscription")
        subscription = self.add(
            {
                "id": sub_id,
                "object": "subscription",
                "billing_cycle_anchor": end if trial_days else now,
                "cancel_at_period_end": boolean(params, "cancel_at_period_end"),
                "canceled_at": None,
                "created": now,
                "currency": price["currency"],
                "current_period_end": end,
                "current_period_start": now,
                "customer": customer["id"],
                "default_payment_method": default_pm or None,
                "ended_at": None,
                "items": {
                    "object": "list",
                    "data": [
                        {
                            "id": new_id("subscription_item"),
                            "object": "subscription_item",
                            "price": price,
                            "quantity": quantity,
                            "subscription": sub_id,
                            "current_period_start": now,
                            "current_period_end": end,
                        }
                    ],
                    "has_more": False,
                    "url": f"/v1/subscription_items?subscription={sub_id}",
                },
                "latest_invoice": None,
                "livemode": False,
                "metadata": metadata_of(params),
                "start_date": now,
                "status": "trialing" if trial_days else "incomplete",
                "test_clock": customer["test_clock"],
                "trial_end": end if trial_days else None,
                "trial_start": now if trial_days else None,
            }
        )
        self.emit("customer.subscription.created", subscription)
        amount = 0 if trial_days else price["unit_amount"] * quantity
        lines = [self._line(subscription, amount, now, end, proration=False)]
        invoice = self._invoice(subscription, lines, "subscription_create")
        paid = self._collect(invoice, subscription)
        if not trial_days and paid:
            self._set_status(subscription, "active")
        return subscription

    def _period_end(self, price: dict[str, Any], start: int) -> int:
        recurring = price["recurring"]
        return add_interval(start, recurring["interval"], recurring["interval_count"])

    def _item(self, subscription: dict[str, Any]) -> dict[str, Any]:
        item: dict[str, Any] = subscription["items"]["data"][0]
        return item

    def _line(
        self,
        subscription: dict[str, Any],
        amount: int,
        start: int,
        end: int,
        *,
        proration: bool,
        description: str | None = None,
        price: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        item = self._item(subscription)
        price = price or item["price"]
        return {
            "id": f"il_{secrets.token_hex(12)}",
            "object": "line_item",
            "amount": amount,
            "currency": subscription["currency"],
            "description": description or f"{item['quantity']} × {price['product']}",
            "period": {"start": start, "end": end},
            "price": price,
            "proration": proration,
            "quantity": item["quantity"],
            "subscription": subscription["id"],
        }

    def _invoice(
        self, subscription: dict[str, Any], lines: list[dict[str, Any]], reason: str
    ) -> dict[str, Any]:
        customer = self.objects[subscription["customer"]]
        now = self.now(customer["id"])
        total = sum(line["amount"] for line in lines)
        # The customer's balance (negative: credit) is applied first; a negative total
        # (a downgrade's proration) becomes credit for later invoices.
        starting = customer["balance"]
        due = max(total + starting, 0)
        customer["balance"] = min(total + starting, 0)
        invoice = self.add(
            {
                "id": new_id("invoice"),
                "object": "invoice",
                "amount_due": due,
                "amount_paid": 0,
                "amount_remaining": due,
                "attempt_count": 0,
                "attempted": False,
                "billing_reason": reason,
                "charge": None,
                "collection_method": "charge_automatically",
                "created": now,
                "currency": subscription["currency"],
                "customer": customer["id"],
                "ending_balance": customer["balance"],
                "lines": {
                    "object": "list",
                    "data": lines,
                    "has_more": False,
                    "url": "/v1/invoices/lines",
                },
                "livemode": False,
                "next_payment_attempt": None,
                "paid": False,
                "payment_intent": None,
                "period_end": max(line["period"]["end"] for line in lines),
                "period_start": min(line["period"]["start"] for line in lines),
                "starting_balance": starting,
                "status": "open",
                "subscription": subscription["id"],
                "subtotal": total,
                "total": total,
            }
        )
        subscription["latest_invoice"] = invoice["id"]
        self.emit("invoice.created", invoice)
        self.emit("invoice.finalized", invoice)
        return invoice

    def _collect(self, invoice: dict[str, Any], subscription: dict[str, Any]) -> bool:
        """Try to pay an open invoice with the subscription's or customer's default
        payment method; True when it is paid."""
        if invoice["amount_due"] == 0:
            self._mark_paid(invoice)
            return True
        customer = self.objects[invoice["customer"]]
        pm_id = (
            subscription["default_payment_method"]
            or customer["invoice_settings"]["default_payment_method"]
        )
        invoice["attempt_count"] += 1
        invoice["attempted"] = True
        if pm_id is None:
            self._payment_failed(invoice, subscription)
            return False
        intent = self.create_payment_intent(
            {
                "amount": str(invoice["amount_due"]),
                "currency": invoice["currency"],
                "customer": customer["id"],
                "payment_method": pm_id,
                "metadata": {"invoice": invoice["id"]},
            }
        )
        invoice["payment_intent"] = intent["id"]
        try:
            self.confirm(intent["id"], {"off_session": "true"})
        except StripeError:
            invoice["charge"] = intent["latest_charge"]
            self._payment_failed(invoice, subscription)
            return False
        invoice["charge"] = intent["latest_charge"]
        self._mark_paid(invoice)
        return True

    def _mark_paid(self, invoice: dict[str, Any]) -> None:
        invoice.update(
            status="paid",
            paid=True,
            amount_paid=invoice["amount_due"],
            amount_remaining=0,
            next_payment_attempt=None,
        )
        self.emit("invoice.paid", invoice)
        self.emit("invoice.payment_succeeded", invoice)

    def _payment_failed(self, invoice: dict[str, Any], subscription: dict[str, Any]) -> None:
        retries = self.dunning_days
        attempt = invoice["attempt_count"]
        now = self.now(invoice["customer"])
        if invoice["billing_reason"] == "subscription_create":
            invoice["next_payment_attempt"] = None
        elif attempt <= len(retries):
            invoice["next_payment_attempt"] = now + retries[attempt - 1] * DAY
        else:
            invoice["next_payment_attempt"] = None
        self.emit("invoice.payment_failed", invoice)
        if invoice["billing_reason"] == "subscription_create":
            return  # stays `incomplete` until paid
        if invoice["next_payment_attempt"] is None:
            self.cancel_subscription(subscription["id"])
        elif subscription["status"] != "past_due":
            self._set_status(subscription, "past_due")

    def pay_invoice(self, invoice_id: str) -> dict[str, Any]:
        invoice = self.get("invoice", invoice_id)
        if invoice["status"] != "open":
            raise invalid("Invoice is already paid", code="invoice_already_paid")
        subscription = self.objects[invoice["subscription"]]
        if self._collect(invoice, subscription):
            if subscription["status"] in ("past_due", "incomplete"):
                self._set_status(subscription, "active")
            return invoice
        raise StripeError(
            402,
            "card_error",
            "Your card was declined.",
            code="card_declined",
            decline_code="generic_decline",
        )

    def _set_status(self, subscription: dict[str, Any], status: str) -> None:
        previous = {"status": subscription["status"]}
        subscription["status"] = status
        self.emit("customer.subscription.updated", subscription, previous)

    def update_subscription(self, sub_id: str, params: dict[str, Any]) -> dict[str, Any]:
        subscription = self.get("subscription", sub_id)
        if subscription["status"] in ("canceled", "incomplete_expired"):
            raise invalid(
                "A canceled subscription can only update its cancellation_details and metadata.",
                code="resource_missing",
            )
        previous: dict[str, Any] = {}
        if "cancel_at_period_end" in params:
            previous["cancel_at_period_end"] = subscription["cancel_at_period_end"]
            subscription["cancel_at_period_end"] = boolean(params, "cancel_at_period_end")
            subscription["canceled_at"] = (
                self.now(subscription["customer"])
                if subscription["cancel_at_period_end"]
                else None
            )
        if "metadata" in params:
            previous["metadata"] = subscription["metadata"]
            subscription["metadata"] = metadata_of(params, subscription["metadata"])
        if params.get("default_payment_method"):
            self.get("payment_method", params["default_payment_method"], "default_payment_method")
            previous["default_payment_method"] = subscription["default_payment_method"]
            subscription["default_payment_method"] = params["default_payment_method"]
        items = params.get("items")
        if items:
            self._change_item(subscription, items, params, previous)
        self.emit("customer.subscription.updated", subscription, previous)
        return subscription

    def _change_item(
        self,
        subscription: dict[str, Any],
        items: Any,
        params: dict[str, Any],
        previous: dict[str, Any],
    ) -> None:
        """A price or quantity change, prorated by the second (Stripe's default)."""
        item = self._item(subscription)
        if not isinstance(items, list) or len(items) != 1 or items[0].get("id") != item["id"]:
            raise invalid(
                "Give the subscription's one item by its id: items[0][id].", param="items"
            )
        behavior = params.get("proration_behavior", "create_prorations")
        if behavior not in ("create_prorations", "none", "always_invoice"):
            raise invalid(
                f"Invalid proration_behavior: {behavior}", param="proration_behavior"
            )
        old_price, old_quantity = item["price"], item["quantity"]
        new_price = (
            self.get("price", items[0]["price"], "items[0][price]")
            if items[0].get("price")
            else old_price
        )
        new_quantity = integer(items[0], "quantity") or old_quantity
        if new_price["recurring"] != old_price["recurring"]:
            raise invalid("The fake prorates only between prices of one interval.", param="items")
        previous["items"] = public(subscription["items"])
        item.update(price=new_price, quantity=new_quantity)
        if behavior == "none" or subscription["status"] == "trialing":
            return
        now = self.now(subscription["customer"])
        start, end = subscription["current_period_start"], subscription["current_period_end"]
        left, whole = max(end - now, 0), end - start
        credit = -_round_half_up(old_price["unit_amount"] * old_quantity * left, whole)
        charge = _round_half_up(new_price["unit_amount"] * new_quantity * left, whole)
        lines = [
            self._line(
                subscription,
                credit,
                now,
                end,
                proration=True,
                description=f"Unused time on {old_quantity} × {old_price['product']}",
                price=old_price,
            ),
            self._line(
                subscription,
                charge,
                now,
                end,
                proration=True,
                description=f"Remaining time on {new_quantity} × {new_price['product']}",
            ),
        ]
        if behavior == "always_invoice":
            invoice = self._invoice(subscription, lines, "subscription_update")
            if invoice["amount_due"] > 0:
                self._collect(invoice, subscription)
            else:
                self._mark_paid(invoice)
        else:
            self.pending_items.setdefault(subscription["id"], []).extend(lines)

    def cancel_subscription(self, sub_id: str) -> dict[str, Any]:
        subscription = self.get("subscription", sub_id)
        if subscription["status"] == "canceled":
            raise invalid(
                f"No such subscription: '{sub_id}' (it is canceled)", code="resource_missing"
            )
        now = self.now(subscription["customer"])
        previous = {"status": subscription["status"]}
        subscription.update(
            status="canceled", canceled_at=subscription["canceled_at"] or now, ended_at=now
        )
        for invoice in self.objects.values():
            if invoice["object"] == "invoice" and invoice.get("subscription") == sub_id:
                invoice["next_payment_attempt"] = None
        self.emit("customer.subscription.deleted", subscription, previous)
        return subscription

    # -- test clocks -----------------------------------------------------------------------

    def create_clock(self, params: dict[str, Any]) -> dict[str, Any]:
        frozen = integer(params, "frozen_time", required=True)
        return self.add(
            {
                "id": new_id("test_helpers.test_clock"),
                "object": "test_helpers.test_clock",
                "created": int(time.time()),
                "deletes_after": int(time.time()) + 30 * DAY,
                "frozen_time": frozen,
                "livemode": False,
                "name": params.get("name"),
                "status": "ready",
            }
        )

    def advance_clock(self, clock_id: str, params: dict[str, Any]) -> dict[str, Any]:
        clock = self.get("test_helpers.test_clock", clock_id)
        target = integer(params, "frozen_time", required=True)
        assert target is not None
        if target <= clock["frozen_time"]:
            raise invalid(
                "The frozen_time must be after the test clock's current frozen time.",
                param="frozen_time",
            )
        customers = {
            o["id"]
            for o in self.objects.values()
            if o["object"] == "customer" and o.get("test_clock") == clock_id
        }
        while True:
            due = self._next_due(customers, target)
            if due is None:
                break
            at, action = due
            clock["frozen_time"] = at
            action()
        clock["frozen_time"] = target
        answer = public(clock)
        answer["status"] = "advancing"  # Stripe advances in the background; done here
        return answer

    def _next_due(self, customers: set[str], target: int) -> tuple[int, Callable[[], None]] | None:
        """The earliest renewal or invoice retry at or before `target`."""
        found: list[tuple[int, Callable[[], None]]] = []
        for obj in list(self.objects.values()):
            if obj.get("customer") not in customers:
                continue
            if obj["object"] == "subscription" and obj["status"] in (
                "active",
                "trialing",
                "past_due",
            ):
                end = obj["current_period_end"]
                if end <= target:
                    found.append((end, lambda s=obj: self._renew(s)))
            if obj["object"] == "invoice" and obj["status"] == "open":
                retry = obj["next_payment_attempt"]
                if retry is not None and retry <= target:
                    found.append((retry, lambda i=obj: self._retry(i)))
        return min(found, key=lambda pair: pair[0]) if found else None

    def _renew(self, subscription: dict[str, Any]) -> None:
        if subscription["cancel_at_period_end"]:
            self.cancel_subscription(subscription["id"])
            return
        item = self._item(subscription)
        start = subscription["current_period_end"]
        end = self._period_end(item["price"], start)
        subscription.update(current_period_start=start, current_period_end=end)
        item.update(current_period_start=start, current_period_end=end)
        lines = self.pending_items.pop(subscription["id"], [])
        amount = item["price"]["unit_amount"] * item["quantity"]
        lines.append(self._line(subscription, amount, start, end, proration=False))
        invoice = self._invoice(subscription, lines, "subscription_cycle")
        if self._collect(invoice, subscription) and subscription["status"] != "active":
            self._set_status(subscription, "active")

    def _retry(self, invoice: dict[str, Any]) -> None:
        subscription = self.objects[invoice["subscription"]]
        if self._collect(invoice, subscription) and subscription["status"] == "past_due":
            self._set_status(subscription, "active")


def _round_half_up(numerator: int, denominator: int) -> int:
    """numerator / denominator to the nearest integer, halves away from zero (integers
    only: no float on the money path)."""
    if denominator == 0:
        return 0
    quotient, remainder = divmod(abs(numerator) * 2 + denominator, 2 * denominator)
    del remainder
    return quotient if numerator >= 0 else -quotient


def public(obj: dict[str, Any]) -> dict[str, Any]:
    """A snapshot of an object (events carry the object as it was), without the fake's
    private keys."""
    snapshot = copy.deepcopy(obj)
    snapshot.pop("_test_card", None)
    return snapshot
