"""Subscriptions, invoices and test clocks of the payments fake (Stripe's billing).

:class:`Account` is :class:`payments_objects.Objects` with Stripe's billing rules: a
subscription of one recurring price with an optional trial; an invoice per period, paid
with the subscription's or the customer's default payment method; a failed renewal makes
the subscription `past_due` and is retried after each of `dunning_days`, after the last
failure the subscription is canceled; a price or quantity change is prorated by the
second, credit for the unused time of the old price and a charge for the rest on the new
one (each rounded half away from zero, integers only), invoiced at once
(`always_invoice`) or on the next invoice (`create_prorations`); a customer's credit
balance pays first. Money is integer minor units throughout.

Where Stripe decides asynchronously, the fake decides at once: a test clock's advance is
processed before the request answers (the clock answers `advancing` and reads `ready`
afterwards). A customer without a test clock lives in real time, where renewals never
come due within a test.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Callable
from typing import Any, Final

from apex_testkit._fakes.payments_objects import (
    DAY,
    Objects,
    StripeError,
    add_interval,
    boolean,
    currency_of,
    integer,
    invalid,
    metadata_of,
    new_id,
    public,
    required,
    required_integer,
)

__all__ = ["Account"]

# Days after a failed renewal at which the invoice is tried again; after the last
# failure the subscription is canceled (Stripe's "cancel the subscription" setting).
DEFAULT_DUNNING_DAYS: Final = (3, 5, 7)


class Account(Objects):
    """Every object of one fake account, billing included."""

    def __init__(self, on_event: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(on_event)
        self.dunning_days: tuple[int, ...] = DEFAULT_DUNNING_DAYS
        # Proration invoice items waiting for a subscription's next invoice.
        self.pending_items: dict[str, list[dict[str, Any]]] = {}

    def delete_customer(self, customer_id: str) -> dict[str, Any]:
        customer = self.get("customer", customer_id)
        for sub in list(self.objects.values()):
            if (
                sub["object"] == "subscription"
                and sub["customer"] == customer_id
                and sub["status"] not in ("canceled", "incomplete_expired")
            ):
                self.cancel_subscription(sub["id"])
        customer["deleted"] = True
        self.emit("customer.deleted", customer)
        return {"id": customer_id, "object": "customer", "deleted": True}

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
        behavior = params.get("payment_behavior", "allow_incomplete")
        if behavior not in ("allow_incomplete", "error_if_incomplete", "default_incomplete"):
            raise invalid(f"Invalid payment_behavior: {behavior}", param="payment_behavior")
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
        if not paid and behavior == "error_if_incomplete":
            # Stripe answers 402 and keeps no subscription (its invoice is voided).
            invoice.update(status="void", next_payment_attempt=None)
            subscription.update(status="incomplete_expired", deleted=True)
            raise StripeError(
                402,
                "card_error",
                "Your card was declined.",
                code="card_declined",
                decline_code=self._decline_code(invoice),
            )
        return subscription

    def _decline_code(self, invoice: dict[str, Any]) -> str:
        """The decline code of the invoice's last payment attempt."""
        intent = self.objects.get(str(invoice.get("payment_intent")))
        error = (intent or {}).get("last_payment_error") or {}
        return str(error.get("decline_code") or "generic_decline")

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
            "description": description or f"{item['quantity']} x {price['product']}",
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
                self.now(subscription["customer"]) if subscription["cancel_at_period_end"] else None
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
            raise invalid(f"Invalid proration_behavior: {behavior}", param="proration_behavior")
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
                description=f"Unused time on {old_quantity} x {old_price['product']}",
                price=old_price,
            ),
            self._line(
                subscription,
                charge,
                now,
                end,
                proration=True,
                description=f"Remaining time on {new_quantity} x {new_price['product']}",
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

    def create_invoice_item(self, params: dict[str, Any]) -> dict[str, Any]:
        """An invoice item (a one-off amount, e.g. metered usage) for the subscription's
        next invoice. The fake needs `subscription` (Stripe would also take a customer's
        next invoice of any kind) and one currency with the subscription."""
        customer = self.get("customer", required(params, "customer"), "customer")
        subscription = self.get("subscription", required(params, "subscription"), "subscription")
        if subscription["customer"] != customer["id"]:
            raise invalid("The subscription belongs to another customer.", param="subscription")
        amount = required_integer(params, "amount")
        currency = currency_of(params)
        if currency != subscription["currency"]:
            raise invalid(
                f"The currency {currency} differs from the subscription's.", param="currency"
            )
        now = self.now(customer["id"])
        description = params.get("description") or "Invoice item"
        line = {
            **self._line(subscription, amount, now, now, proration=False, description=description),
            "price": None,
            "quantity": 1,
        }
        self.pending_items.setdefault(subscription["id"], []).append(line)
        return self.add(
            {
                "id": new_id("invoiceitem"),
                "object": "invoiceitem",
                "amount": amount,
                "currency": currency,
                "customer": customer["id"],
                "date": now,
                "description": description,
                "livemode": False,
                "metadata": metadata_of(params),
                "period": {"start": now, "end": now},
                "proration": False,
                "subscription": subscription["id"],
            }
        )

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
        frozen = required_integer(params, "frozen_time")
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
        target = required_integer(params, "frozen_time")
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
                    found.append((end, functools.partial(self._renew, obj)))
            if obj["object"] == "invoice" and obj["status"] == "open":
                retry = obj["next_payment_attempt"]
                if retry is not None and retry <= target:
                    found.append((retry, functools.partial(self._retry, obj)))
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
