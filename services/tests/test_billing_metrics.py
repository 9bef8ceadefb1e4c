"""apex.billing's counters: every series exported from a fresh instance's first scrape."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from apex.billing.metrics import Metrics


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }


def test_a_fresh_instance_exports_every_kind_and_outcome_at_zero() -> None:
    samples = _samples(Metrics())
    for kind in ("subscribed", "upgraded", "downgraded", "canceled", "resumed", "declined"):
        assert samples[("apex_billing_subscription_changes_total", (("kind", kind),))] == 0
    for outcome in ("processed", "duplicate", "rejected"):
        assert samples[("apex_billing_webhooks_total", (("outcome", outcome),))] == 0


def test_an_increment_moves_only_its_series() -> None:
    metrics = Metrics()
    metrics.subscriptions.labels("upgraded").inc()
    samples = _samples(metrics)
    assert samples[("apex_billing_subscription_changes_total", (("kind", "upgraded"),))] == 1
    assert samples[("apex_billing_subscription_changes_total", (("kind", "downgraded"),))] == 0
