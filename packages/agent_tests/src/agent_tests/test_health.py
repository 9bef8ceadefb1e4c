"""002#12 service discovery and health checks: apex.agents' `/healthz`.

The rule under test (notes-agents.md): `/healthz` needs no credentials and says 200 with
a `checks` object (postgres, redis, and each LLM provider's breaker state: both closed on a
fresh instance) while the service runs.
"""

from __future__ import annotations

import httpx
import pytest

HEALTH = pytest.mark.bvj(
    segment="platform", goal="Operators and balancers see whether the agents service is up",
    mrr=6000, scenario="002#12",
)  # fmt: skip


@HEALTH
@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_healthz_answers_without_credentials(agents_client: httpx.AsyncClient) -> None:
    response = await agents_client.get("/healthz")
    assert response.status_code == 200, response.text
    providers = {"llm": "closed", "llm_fallback": "closed"}
    checks = {"postgres": "ok", "redis": "ok", "providers": providers}
    assert response.json() == {"status": "ok", "checks": checks}
