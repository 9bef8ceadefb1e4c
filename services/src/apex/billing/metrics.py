"""apex.billing's metrics, exposed in the Prometheus text format (prometheus-client).

One :class:`Metrics` per app, on its own registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The billing service's counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.subscriptions = Counter(
            "apex_billing_subscription_changes",
            "Subscription changes by kind (subscribed, upgraded, downgraded, canceled, "
            "resumed, declined)",
            ["kind"],
            registry=self.registry,
        )
        self.webhooks = Counter(
            "apex_billing_webhooks",
            "Webhook deliveries by outcome (processed, duplicate, rejected)",
            ["outcome"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
