"""The objects of the payments fake, in the shapes of Stripe's API: payments.

:class:`Objects` holds every object of the account and its events, and applies Stripe's
rules to customers, payment methods, payment intents, charges, refunds, products and
prices: test payment methods that succeed, decline, require authentication, or attach
and then fail every charge (`pm_card_chargeCustomerFail`); refunds bounded by what is
left. Subscriptions, invoices and test clocks are `payments_billing`'s. Every change
records its events (an `*.updated` event carries `previous_attributes`). Money is integer
minor units throughout.
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
    "pm_card_chargeDeclinedInsufficientFunds": Card(
        "visa", "9995", "decline", "insufficient_funds"
    ),
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


def integer(params: dict[str, Any], name: str) -> int | None:
    """Parameter `name` as an integer, None when absent (Stripe's 'Invalid integer' when
    it is not one)."""
    value = params.get(name)
    if value is None or value == "":
        return None
    try:
        number = int(str(value))
    except ValueError:
        raise invalid(f"Invalid integer: {value}", param=name) from None
    if number < 0:
        raise invalid(f"This value must be greater than or equal to 0 ({name}).", param=name)
    return number


def required_integer(params: dict[str, Any], name: str) -> int:
    """Parameter `name` as an integer, which must be given."""
    number = integer(params, name)
    if number is None:
        raise invalid(f"Missing required param: {name}.", param=name)
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
        amount = required_integer(params, "amount")
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
                status="failed",
                failure_code="card_declined",
                failure_message=error.error["message"],
            )
            intent["status"] = "requires_payment_method"
            intent["last_payment_error"] = dict(error.error)
            error.error["charge"] = charge["id"]
            error.error["payment_intent"] = public(intent)
            self.emit("charge.failed", charge)
            self.emit("payment_intent.payment_failed", intent)
            raise error
        charge.update(
            status="succeeded", paid=True, captured=True, amount_captured=charge["amount"]
        )
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
        unit_amount = required_integer(params, "unit_amount")
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


def public(obj: dict[str, Any]) -> dict[str, Any]:
    """A snapshot of an object (events carry the object as it was), without the fake's
    private keys."""
    snapshot = copy.deepcopy(obj)
    snapshot.pop("_test_card", None)
    return snapshot
