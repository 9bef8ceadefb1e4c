"""The provider's webhooks (001#98): verified, processed once in effect, in any order.

:func:`verify` checks ``Stripe-Signature`` with the SDK's own
``stripe.Webhook.construct_event`` (HMAC-SHA256 of ``t.payload`` under
APEX_PAYMENTS_WEBHOOK_SECRET, the timestamp within APEX_WEBHOOK_TOLERANCE): a forged or
stale event is refused before anything is read from it. :class:`WebhookProcessor` records
each event id in ``billing_events`` in the same transaction as its effect: a replay finds
the id and changes nothing, and an effect that fails rolls the id back so the provider's
retry runs it again. Events carry no state the processor trusts: a subscription event makes
it fetch the subscription from the provider (the newest state wins, whatever the order of
arrival), an ``invoice.paid`` makes it fetch the invoice and book it, a ``charge.refunded``
makes it book what the provider refunded of the charge and the ledger lacks (``refunds``).
"""

from __future__ import annotations

import logging
from typing import Any, Final

import stripe

from apex.billing.payments import ProviderUnavailable
from apex.billing.refunds import Refunds
from apex.billing.store import SubscriptionRow
from apex.billing.subscriptions import Subscriptions
from apex.common.http import ApiError

__all__ = ["WebhookProcessor", "verify"]

log = logging.getLogger(__name__)

_SUBSCRIPTION_EVENTS: Final = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
    }
)


def verify(payload: bytes, signature: str | None, secret: str, tolerance: int) -> stripe.Event:
    """The event, if the provider signed it lately; 400 ``invalid_signature`` otherwise."""
    if not signature:
        raise ApiError(400, "invalid_signature", "no Stripe-Signature header")
    try:
        event: stripe.Event = stripe.Webhook.construct_event(payload, signature, secret, tolerance)
    except stripe.SignatureVerificationError as exc:
        raise ApiError(400, "invalid_signature", str(exc.user_message)) from exc
    except ValueError as exc:
        raise ApiError(400, "invalid_payload", f"the payload is not an event: {exc}") from exc
    return event


class WebhookProcessor:
    """Applies verified events once."""

    def __init__(self, subscriptions: Subscriptions, refunds: Refunds) -> None:
        self.subscriptions = subscriptions
        self.refunds = refunds

    async def process(self, event: stripe.Event) -> dict[str, Any]:
        """Apply ``event`` unless it was applied before; what happened."""
        store = self.subscriptions.store
        changed: SubscriptionRow | None = None
        try:
            async with store.pool.acquire() as conn, conn.transaction():
                fresh = await conn.fetchval(
                    "INSERT INTO billing_events (event_id, type) VALUES ($1, $2) "
                    "ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
                    event.id,
                    event.type,
                )
                if fresh is None:
                    return {"event": event.id, "duplicate": True}
                obj = event.data.object
                if event.type in _SUBSCRIPTION_EVENTS:
                    changed = await self.subscriptions.refresh(conn, str(obj["id"]))
                elif event.type == "invoice.paid":
                    invoice = await self.subscriptions.provider.invoice(str(obj["id"]))
                    tenant = await store.tenant_of_customer(str(invoice.customer))
                    if tenant is not None:
                        await self.subscriptions.record_invoice(conn, tenant, invoice)
                elif event.type == "charge.refunded":
                    await self.refunds.catch_up(conn, str(obj["id"]))
        except ProviderUnavailable as exc:
            # Nothing was recorded: the provider retries the delivery.
            raise ApiError(503, "provider_unavailable", str(exc)) from exc
        if changed is not None:
            await self.subscriptions.publish(changed)
        return {"event": event.id, "duplicate": False}
