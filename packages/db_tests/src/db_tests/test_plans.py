"""001#78 query optimization: the queries that must use an index do.

The rule under test (contract-data.md, Behaviours): on a table with enough rows that a
sequential scan would be chosen without it, `EXPLAIN (FORMAT JSON)` of the summary and of
the idempotency lookup (as the service runs them: `GET /admin/plans`, in the tenant's
transaction) shows a scan of their index and no sequential scan of `usage_records`.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from db_tests.client import admin_headers

PLANS = pytest.mark.bvj(
    segment="enterprise", goal="Usage summaries stay fast as the table grows",
    mrr=8000, scenario="001#78",
)  # fmt: skip
pytestmark = [PLANS, pytest.mark.L2]

TENANTS = 200
PER_TENANT = 200
INDEX_SCANS = {"Index Scan", "Index Only Scan", "Bitmap Index Scan"}


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def _seed(db: Any) -> str:
    """TENANTS * PER_TENANT records, each tenant's 6 h apart (50 days); one tenant.
    Made by the server (generate_series): built in Python, they took about a second."""
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    tenants = [uuid.uuid4() for _ in range(TENANTS)]
    await db.execute(
        "INSERT INTO usage_records (id, tenant_id, user_id, kind, quantity, cost_micros, "
        "idempotency_key, occurred_at) "
        "SELECT gen_random_uuid(), tenant, $1::uuid, 'tokens', 1, 1, 'k' || i, "
        "$2::timestamptz + make_interval(hours => 6 * i) "
        "FROM unnest($3::uuid[]) AS tenant, generate_series(0, $4::int - 1) AS i",
        uuid.uuid4(),
        start,
        tenants,
        PER_TENANT,
    )
    await db.execute("ANALYZE usage_records")
    return str(tenants[TENANTS // 2])


async def test_the_summary_and_the_idempotency_lookup_use_their_index(
    data_client: httpx.AsyncClient, data_db: Any, admin_token: str
) -> None:
    tenant = await _seed(data_db)
    assert await data_db.fetchval("SELECT count(*) FROM usage_records") == TENANTS * PER_TENANT
    response = await data_client.get(
        "/admin/plans",
        params={
            "tenant_id": tenant,
            "since": "2026-01-01T00:00:00Z",
            "until": "2026-01-02T00:00:00Z",
        },
        headers=admin_headers(admin_token),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    for query, index in (
        ("summary", "usage_records_tenant_time"),
        ("idempotency", "usage_records_tenant_id_idempotency_key_key"),
    ):
        nodes = list(_nodes(body[query][0]["Plan"]))
        scans = {(n["Node Type"], n.get("Index Name")) for n in nodes if "Scan" in n["Node Type"]}
        assert any(kind in INDEX_SCANS and name == index for kind, name in scans), (query, scans)
        assert not any(n["Node Type"] == "Seq Scan" for n in nodes), (query, scans)


@pytest.mark.L4
async def test_plans_answer_the_admin_token_only(data_client: httpx.AsyncClient) -> None:
    response = await data_client.get("/admin/plans", params={"tenant_id": str(uuid.uuid4())})
    assert response.status_code == 401, response.text
