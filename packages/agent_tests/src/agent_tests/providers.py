"""What the provider tests read of apex.agents: its breakers and its metrics.

Public: `health` (the `/healthz` status code and body), `breakers` (each provider's
breaker state as `/healthz` names it), `metric` (one sample of `/metrics`, 0 when the
series does not exist yet), `chat_requests` (a fake provider's chat completion requests).
"""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from agent_tests.client import admin_headers
from apex_testkit import FakeLlm, LlmRequest

__all__ = ["breakers", "chat_requests", "health", "metric"]


async def health(client: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    """`GET /healthz`: its status code and body."""
    response = await client.get("/healthz")
    body: dict[str, Any] = response.json()
    return response.status_code, body


async def breakers(client: httpx.AsyncClient) -> dict[str, str]:
    """Each provider's breaker state in `/healthz` (`checks.providers`)."""
    _, body = await health(client)
    states: dict[str, str] = body["checks"]["providers"]
    return states


async def metric(client: httpx.AsyncClient, admin_token: str, name: str, **labels: str) -> float:
    """The value of sample `name` with exactly these labels in `/metrics` (0.0 if absent:
    a labelled counter shows up only once counted)."""
    response = await client.get("/metrics", headers=admin_headers(admin_token))
    assert response.status_code == 200, response.text
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def chat_requests(fake: FakeLlm) -> list[LlmRequest]:
    """The chat completion requests `fake` received since its reset, oldest first."""
    return [c for c in fake.calls if c.path.endswith("/chat/completions")]
