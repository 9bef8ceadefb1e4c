"""The data service's promises seen through its public API and admin routes alone, so
they hold at every level and at L4 against a deployment: 001#51 (a record stored once per
idempotency key, and copied to analytics), 002#10 (isolation's self-check), 001#61 (view
refresh refused for unknown views), and 004#2: the purge of a run's tenants, which
leaves the local stack as the run found it.

The rules under test (contract-data.md, Routes; notes-data.md): the same idempotency
key again answers 200 with the first record and counts once; bad input is 422 and
stores nothing; the relay copies every committed record to ClickHouse, so analytics
agree with the summary once `relay_lag` is 0 (the relay runs in the deployment's
background); `GET /admin/isolation` sees no record outside a tenant transaction;
`POST /admin/tenants/purge` deletes what tenants wrote and counts it, once. State is read
back through the summary with `Cache-Control: no-cache` (from the database).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from apex_testkit import eventually
from db_tests.client import (
    BILLING_READ,
    RUN_AGENTS,
    DataUser,
    MakeUser,
    admin_headers,
    error_of,
    purge_tenants,
    usage_body,
)

SYNC = pytest.mark.bvj(
    segment="enterprise", goal="Every usage record billed once, and seen by analytics",
    mrr=12000, scenario="001#51",
)  # fmt: skip
ISOLATION = pytest.mark.bvj(
    segment="enterprise", goal="A tenant's usage never leaks to another tenant",
    mrr=20000, scenario="002#10",
)  # fmt: skip
VIEWS = pytest.mark.bvj(
    segment="enterprise", goal="Operators refresh only the views that exist",
    mrr=3000, scenario="001#61",
)  # fmt: skip
STACK = pytest.mark.bvj(
    segment="platform", goal="A test run leaves the shared stack as it found it",
    mrr=5000, scenario="004#2",
)  # fmt: skip
pytestmark = [pytest.mark.L2, pytest.mark.L3, pytest.mark.L4]

NO_CACHE = {"Cache-Control": "no-cache"}


@pytest.fixture
async def user(make_data_user: MakeUser) -> DataUser:
    return await make_data_user(permissions=(RUN_AGENTS, BILLING_READ))


async def _stored(client: httpx.AsyncClient, user: DataUser) -> dict[str, Any]:
    """What the database holds for the user's tenant: totals per kind."""
    response = await client.get("/v1/usage/summary", headers={**user.headers, **NO_CACHE})
    assert response.status_code == 200, response.text
    by_kind: dict[str, Any] = response.json()["by_kind"]
    return by_kind


@SYNC
async def test_the_same_idempotency_key_answers_the_first_record_and_counts_once(
    data_client: httpx.AsyncClient, user: DataUser
) -> None:
    body = usage_body(user.user_id, quantity=5, cost_micros=50)
    first = await data_client.post("/v1/usage", json=body, headers=user.headers)
    assert first.status_code == 201, first.text
    again = await data_client.post(
        "/v1/usage", json={**body, "quantity": 999}, headers=user.headers
    )
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert await _stored(data_client, user) == {"tokens": {"quantity": 5, "cost_micros": 50}}


@SYNC
@pytest.mark.parametrize(
    "change",
    [{"quantity": -1}, {"kind": "Tokens!"}, {"idempotency_key": "a\x00b"}, {"unexpected": 1}],
    ids=["negative", "bad-kind", "nul-in-key", "unknown-field"],
)
async def test_bad_input_is_422_and_stores_nothing(
    data_client: httpx.AsyncClient, user: DataUser, change: dict[str, Any]
) -> None:
    body = {**usage_body(user.user_id), **change}
    response = await data_client.post("/v1/usage", json=body, headers=user.headers)
    assert response.status_code == 422, response.text
    assert error_of(response) == "invalid_request"
    assert await _stored(data_client, user) == {}


@SYNC
async def test_analytics_agree_with_the_summary_once_relayed(
    data_client: httpx.AsyncClient, user: DataUser
) -> None:
    records = [
        usage_body(user.user_id, kind=kind, quantity=q, cost_micros=2 * q)
        for kind, q in (("tokens", 10), ("tokens", 20), ("tool_calls", 3))
    ]
    stored = await data_client.post(
        "/v1/usage/batch", json={"records": records}, headers=user.headers
    )
    assert stored.status_code == 201, stored.text
    expected = {
        "tokens": {"quantity": 30, "cost_micros": 60},
        "tool_calls": {"quantity": 3, "cost_micros": 6},
    }
    assert await _stored(data_client, user) == expected

    async def relayed() -> dict[str, Any] | None:
        response = await data_client.get("/v1/usage/analytics", headers=user.headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body if body["by_kind"] == expected else None

    # The background relay copies the batch; each record counts once in ClickHouse.
    analytics = await eventually(relayed, timeout=60, message="the batch in analytics")
    assert analytics is not None
    assert analytics["source"] == "clickhouse"


@ISOLATION
async def test_the_isolation_self_check_sees_no_record_outside_a_tenant(
    data_client: httpx.AsyncClient, user: DataUser, admin_token: str
) -> None:
    stored = await data_client.post(
        "/v1/usage", json=usage_body(user.user_id), headers=user.headers
    )
    assert stored.status_code == 201, stored.text
    response = await data_client.get("/admin/isolation", headers=admin_headers(admin_token))
    assert response.status_code == 200, response.text
    assert response.json() == {"role": "apex_data", "usage_records_visible": 0}


@VIEWS
async def test_refreshing_an_unknown_view_is_refused(
    data_client: httpx.AsyncClient, admin_token: str
) -> None:
    response = await data_client.post(
        "/admin/views/refresh", json={"view": "no_such_view"}, headers=admin_headers(admin_token)
    )
    assert response.status_code == 422, response.text
    assert error_of(response) == "unknown_view"


@STACK
async def test_a_purge_deletes_what_the_tenants_wrote_once(
    data_client: httpx.AsyncClient, user: DataUser, make_data_user: MakeUser, admin_token: str
) -> None:
    kept = await make_data_user(permissions=(RUN_AGENTS, BILLING_READ))
    records = [usage_body(user.user_id, quantity=1) for _ in range(5)]
    for writer, batch in ((user, records), (kept, records[:1])):
        stored = await data_client.post(
            "/v1/usage/batch", json={"records": batch}, headers=writer.headers
        )
        assert stored.status_code == 201, stored.text
    assert await _stored(data_client, user) != {}
    purged = await purge_tenants(data_client, admin_token, [str(user.tenant_id)])
    # The relay may already have copied (and acked) the outbox rows: they go all the same.
    assert (purged["usage_records"], purged["outbox"], purged["tenants"]) == (5, 5, 1)
    assert await _stored(data_client, user) == {}
    assert await _stored(data_client, kept) == {"tokens": {"quantity": 1, "cost_micros": 250}}
    again = await purge_tenants(data_client, admin_token, [str(user.tenant_id)])
    assert (again["usage_records"], again["outbox"]) == (0, 0)


@STACK
async def test_a_purge_needs_the_admin_token_and_deletes_nothing_without_it(
    data_client: httpx.AsyncClient, user: DataUser
) -> None:
    stored = await data_client.post(
        "/v1/usage", json=usage_body(user.user_id, quantity=2), headers=user.headers
    )
    assert stored.status_code == 201, stored.text
    response = await data_client.post(
        "/admin/tenants/purge", json={"tenant_ids": [user.tenant_id]}, headers=user.headers
    )
    assert response.status_code == 401, response.text
    assert await _stored(data_client, user) == {"tokens": {"quantity": 2, "cost_micros": 250}}
