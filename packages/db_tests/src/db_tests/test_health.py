"""002#12 service discovery and health checks: apex.data's `/healthz`.

The rule under test (contract-data.md, Routes): `/healthz` needs no credentials and says
200 with a `checks` object while the service runs.
"""

from __future__ import annotations

import httpx
import pytest

HEALTH = pytest.mark.bvj(
    segment="platform", goal="Operators and balancers see whether the data service is up",
    mrr=6000, scenario="002#12",
)  # fmt: skip


@HEALTH
@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_healthz_answers_without_credentials(data_client: httpx.AsyncClient) -> None:
    response = await data_client.get("/healthz")
    assert response.status_code == 200, response.text
    assert isinstance(response.json()["checks"], dict)
