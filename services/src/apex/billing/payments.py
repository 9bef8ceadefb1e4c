"""The payment provider, through the official ``stripe`` SDK (``StripeClient``, async).

:class:`PaymentProvider` is the one place apex.billing talks to the provider: its API base
is APEX_PAYMENTS_BASE_URL, and every write carries an idempotency key derived from what it
does (the tenant, the plan, the subscription), so a retried request never makes a second
customer, price or subscription. The SDK retries a lost connection or a 5xx twice itself
(``max_network_retries``: it reuses the idempotency key), with its own backoff scaled to
start from APEX_PAYMENTS_RETRY_DELAY (its default is the SDK's). A card the provider declines
raises :class:`PaymentDeclined` with its decline code; a provider that does not answer
raises :class:`ProviderUnavailable`.
"""

from __future__ import annotations

from typing import Any, Final

import stripe

from apex.common.http import ApiError

__all__ = ["PaymentDeclined", "PaymentProvider", "ProviderUnavailable"]

_NETWORK_RETRIES: Final = 2


class PaymentDeclined(Exception):
    """The provider refused the card: ``code`` is its decline code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ProviderUnavailable(Exception):
    """The provider did not answer, or answered with an error of its own."""


class _HttpxClient(stripe.HTTPXClient):
    """The SDK's httpx client, handing a request's form-encoded body to httpx as
    ``content=``: the SDK passes it as ``data=``, which httpx deprecates for text (a
    DeprecationWarning per provider write). The bytes sent are the same. Its retries wait
    the SDK's backoff scaled so that the first wait is ``retry_delay`` seconds."""

    def __init__(self, *, timeout: float, retry_delay: float) -> None:
        super().__init__(timeout=timeout)
        self._retry_scale = retry_delay / stripe.HTTPClient.INITIAL_DELAY

    def _sleep_time_seconds(self, num_retries: int) -> float:
        # The SDK's backoff (doubling from INITIAL_DELAY, jitter, never under INITIAL_DELAY,
        # at most MAX_DELAY) reads the class constant ``HTTPClient.INITIAL_DELAY`` by name,
        # so an attribute of this subclass would not change it: its result is scaled
        # instead (a scale of exactly 1 at the default, the SDK's own delays).
        return super()._sleep_time_seconds(num_retries) * self._retry_scale

    def _get_request_args_kwargs(  # type: ignore[no-untyped-def]
        self, method: str, url: str, headers: Any, post_data: Any
    ):
        args, kwargs = super()._get_request_args_kwargs(method, url, headers, post_data)
        body = kwargs.pop("data", None)
        if isinstance(body, str | bytes):
            kwargs["content"] = body
        elif body:
            kwargs["data"] = body
        return [args, kwargs]


class PaymentProvider:
    """The provider's API as apex.billing uses it."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float, retry_delay: float) -> None:
        self._http = _HttpxClient(timeout=timeout, retry_delay=retry_delay)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": base_url},
            http_client=self._http,
            max_network_retries=_NETWORK_RETRIES,
        )

    async def aclose(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

    async def customer(self, tenant: str, test_clock: str | None) -> str:
        """A new customer for ``tenant`` (made once per tenant: the key is the tenant's)."""
        params: dict[str, Any] = {"metadata": {"tenant_id": tenant}}
        if test_clock is not None:
            params["test_clock"] = test_clock
        found = await self._call(
            self._client.v1.customers.create_async, params, key=f"customer:{tenant}"
        )
        return str(found.id)

    async def price(self, plan: str, amount: int, currency: str) -> str:
        """A monthly price of ``amount`` for ``plan`` (its product named after the plan)."""
        params = {
            "currency": currency,
            "unit_amount": amount,
            "recurring": {"interval": "month"},
            "product_data": {"name": f"Apex {plan}"},
            "lookup_key": f"apex-{plan}-{amount}",
        }
        found = await self._call(
            self._client.v1.prices.create_async, params, key=f"price:{plan}:{amount}:{currency}"
        )
        return str(found.id)

    async def attach(self, customer: str, payment_method: str) -> str:
        """Attach ``payment_method`` to ``customer`` and make it the default; its id."""
        attached = await self._call(
            lambda params, options: self._client.v1.payment_methods.attach_async(
                payment_method, params, options
            ),
            {"customer": customer},
            key=f"attach:{customer}:{payment_method}",
        )
        await self._call(
            lambda params, options: self._client.v1.customers.update_async(
                customer, params, options
            ),
            {"invoice_settings": {"default_payment_method": attached.id}},
            key=f"default:{customer}:{attached.id}",
        )
        return str(attached.id)

    async def subscribe(
        self, customer: str, price: str, *, trial_days: int, key: str
    ) -> stripe.Subscription:
        """A subscription of ``customer`` to ``price``, its first invoice paid or nothing
        (``payment_behavior=error_if_incomplete``: a decline makes no subscription)."""
        params: dict[str, Any] = {
            "customer": customer,
            "items": [{"price": price}],
            "payment_behavior": "error_if_incomplete",
        }
        if trial_days:
            params["trial_period_days"] = trial_days
        found: stripe.Subscription = await self._call(
            self._client.v1.subscriptions.create_async, params, key=key
        )
        return found

    async def change(
        self, subscription: str, item: str, price: str, *, prorate_now: bool, key: str
    ) -> stripe.Subscription:
        """Move the subscription's item to ``price``: prorated and invoiced now, or the
        proration left for the next invoice."""
        params = {
            "items": [{"id": item, "price": price}],
            "proration_behavior": "always_invoice" if prorate_now else "create_prorations",
        }
        found: stripe.Subscription = await self._call(
            lambda params, options: self._client.v1.subscriptions.update_async(
                subscription, params, options
            ),
            params,
            key=key,
        )
        return found

    async def cancel_at_period_end(
        self, subscription: str, cancel: bool, *, key: str
    ) -> stripe.Subscription:
        """Set (or undo) the end of the subscription at its period's end."""
        found: stripe.Subscription = await self._call(
            lambda params, options: self._client.v1.subscriptions.update_async(
                subscription, params, options
            ),
            {"cancel_at_period_end": cancel},
            key=key,
        )
        return found

    async def invoice_item(
        self, customer: str, subscription: str, amount: int, description: str, *, key: str
    ) -> str:
        """A one-off line (usage) on the subscription's next invoice, in US cents; its id.
        The same key with other parameters is 409 ``already_invoiced``."""
        try:
            found = await self._client.v1.invoice_items.create_async(
                {
                    "customer": customer,
                    "subscription": subscription,
                    "amount": amount,
                    "currency": "usd",
                    "description": description,
                },
                {"idempotency_key": key},
            )
        except stripe.IdempotencyError as exc:
            raise ApiError(
                409, "already_invoiced", "this period's usage was invoiced with other amounts"
            ) from exc
        except stripe.StripeError as exc:
            raise ProviderUnavailable(f"{type(exc).__name__}: {exc.user_message}") from exc
        return str(found.id)

    async def subscription(self, subscription: str) -> stripe.Subscription:
        """The subscription as the provider has it now."""
        try:
            found: stripe.Subscription = await self._client.v1.subscriptions.retrieve_async(
                subscription
            )
        except stripe.StripeError as exc:
            raise ProviderUnavailable(f"{type(exc).__name__}: {exc.user_message}") from exc
        return found

    async def invoice(self, invoice: str) -> stripe.Invoice:
        """The invoice as the provider has it now."""
        try:
            found: stripe.Invoice = await self._client.v1.invoices.retrieve_async(invoice)
        except stripe.StripeError as exc:
            raise ProviderUnavailable(f"{type(exc).__name__}: {exc.user_message}") from exc
        return found

    async def refund(self, charge: str, amount: int, *, key: str) -> str:
        """Refund ``amount`` of ``charge``; the refund's id."""
        found = await self._call(
            self._client.v1.refunds.create_async, {"charge": charge, "amount": amount}, key=key
        )
        return str(found.id)

    async def charge(self, charge: str) -> stripe.Charge:
        """The charge as the provider has it now (``amount_refunded``)."""
        try:
            found: stripe.Charge = await self._client.v1.charges.retrieve_async(charge)
        except stripe.StripeError as exc:
            raise ProviderUnavailable(f"{type(exc).__name__}: {exc.user_message}") from exc
        return found

    async def _call(self, method: Any, params: dict[str, Any], *, key: str) -> Any:
        try:
            return await method(params, {"idempotency_key": key})
        except stripe.CardError as exc:
            code = (exc.error.decline_code if exc.error else None) or exc.code or "card_declined"
            raise PaymentDeclined(str(code), str(exc.user_message)) from exc
        except stripe.StripeError as exc:
            raise ProviderUnavailable(f"{type(exc).__name__}: {exc.user_message}") from exc
