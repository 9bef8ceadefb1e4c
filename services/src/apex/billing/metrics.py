"""apex.billing's metrics, exposed in the Prometheus text format (prometheus-client).

One :class:`Metrics` per app, on its own registry. Every label value a counter can take
is exported from the start at 0 (Prometheus' advice for known label sets): a fresh
instance's scrape shows each series, and a rate over a first increment starts from 0.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE", "SUBSCRIPTION_CHANGES", "WEBHOOK_OUTCOMES", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
SUBSCRIPTION_CHANGES = ("subscribed", "upgraded", "downgraded", "canceled", "resumed", "declined")
WEBHOOK_OUTCOMES = ("processed", "duplicate", "rejected")


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
        for kind in SUBSCRIPTION_CHANGES:
            self.subscriptions.labels(kind)
        for outcome in WEBHOOK_OUTCOMES:
            self.webhooks.labels(outcome)

    def render(self) -> bytes:
        return generate_latest(self.registry)
