"""001#51 PostgreSQL-ClickHouse transaction sync, the consistency check: what
`GET /v1/usage/analytics` (ClickHouse) says against what `GET /v1/usage/summary`
(PostgreSQL) says, before and after the relay.

The rules under test (contract-data.md, Routes): analytics are ClickHouse's totals of
what the relay has copied, with `relay_lag` the outbox rows not relayed yet; records
written through `POST /v1/usage` reach ClickHouse through the outbox and then agree with
the primary; reading analytics needs `billing:read`.
"""

from __future__ import annotations

import httpx
import pytest

from db_tests.client import BILLING_READ, RUN_AGENTS, MakeUser, error_of, usage_body

CONSISTENCY = pytest.mark.bvj(
    segment="enterprise", goal="Analytics agree with the billing database",
    mrr=10000, scenario="001#51",
)  # fmt: skip

RECORDS = (("tokens", 100, 250), ("tokens", 50, 125), ("images", 2, 4000))


@CONSISTENCY
@pytest.mark.L2
@pytest.mark.L3
async def test_analytics_agree_with_the_primary_once_relayed(
    relay_client: httpx.AsyncClient, make_data_user: MakeUser, data_admin: dict[str, str]
) -> None:
    user = await make_data_user(permissions=(RUN_AGENTS, BILLING_READ))
    for kind, quantity, cost in RECORDS:
        body = usage_body(user.user_id, kind=kind, quantity=quantity, cost_micros=cost)
        written = await relay_client.post("/v1/usage", json=body, headers=user.headers)
        assert written.status_code == 201, written.text

    before = await relay_client.get("/v1/usage/analytics", headers=user.headers)
    assert before.status_code == 200, before.text
    assert before.json() == {
        "tenant_id": user.tenant_id, "by_kind": {}, "relay_lag": 3, "source": "clickhouse"
    }  # fmt: skip

    relayed = await relay_client.post("/admin/relay/run", headers=data_admin)
    assert relayed.status_code == 200, relayed.text

    after = await relay_client.get("/v1/usage/analytics", headers=user.headers)
    assert after.status_code == 200, after.text
    expected = {
        "images": {"quantity": 2, "cost_micros": 4000},
        "tokens": {"quantity": 150, "cost_micros": 375},
    }
    assert after.json() == {
        "tenant_id": user.tenant_id, "by_kind": expected, "relay_lag": 0, "source": "clickhouse"
    }  # fmt: skip
    summary = await relay_client.get("/v1/usage/summary", headers=user.headers)
    assert summary.status_code == 200, summary.text
    assert summary.json()["by_kind"] == expected


@CONSISTENCY
@pytest.mark.L2
async def test_analytics_window_and_tenant(
    relay_client: httpx.AsyncClient, make_data_user: MakeUser, data_admin: dict[str, str]
) -> None:
    alice = await make_data_user(permissions=(RUN_AGENTS, BILLING_READ))
    bob = await make_data_user(permissions=(RUN_AGENTS, BILLING_READ))
    for user, moment in ((alice, "2026-01-01T10:00:00Z"), (alice, "2026-01-02T10:00:00Z")):
        body = usage_body(user.user_id, occurred_at=moment, quantity=10)
        written = await relay_client.post("/v1/usage", json=body, headers=user.headers)
        assert written.status_code == 201, written.text
    relayed = await relay_client.post("/admin/relay/run", headers=data_admin)
    assert relayed.status_code == 200, relayed.text

    window = {"since": "2026-01-02T00:00:00Z", "until": "2026-01-03T00:00:00Z"}
    alices = await relay_client.get("/v1/usage/analytics", params=window, headers=alice.headers)
    assert alices.status_code == 200, alices.text
    assert alices.json()["by_kind"] == {"tokens": {"quantity": 10, "cost_micros": 250}}
    bobs = await relay_client.get("/v1/usage/analytics", headers=bob.headers)
    assert bobs.status_code == 200, bobs.text
    assert bobs.json()["by_kind"] == {}


@CONSISTENCY
@pytest.mark.L2
async def test_analytics_need_billing_read(
    relay_client: httpx.AsyncClient, make_data_user: MakeUser
) -> None:
    user = await make_data_user(permissions=(RUN_AGENTS,))
    response = await relay_client.get("/v1/usage/analytics", headers=user.headers)
    assert response.status_code == 403, response.text
    assert error_of(response) == "forbidden"
