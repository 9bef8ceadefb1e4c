"""002#12 service discovery and health checks, 001#65 database monitoring and 002#8 the
metrics pipeline (Prometheus exposition).

The rules under test (contract-data.md, Routes): `/healthz` needs no credentials and
says 200 with a check per store (postgres, replica `ok|lagging|down|absent`, redis,
clickhouse) and of apex.auth, 503 when the primary or Redis is down; `/metrics` and `/admin/pools`
answer the admin token only; `/metrics` is Prometheus text that the official parser
reads, with the contract's metrics, moving with the traffic.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from apex_testkit import Platform, eventually
from db_tests.client import (
    BILLING_READ,
    RUN_AGENTS,
    MakeUser,
    admin_headers,
    bearer,
    error_of,
    usage_body,
)
from db_tests.faults import proxied_data
from db_tests.state import metrics, sample

HEALTH = pytest.mark.bvj(
    segment="platform", goal="Balancers and operators see which store the data service lacks",
    mrr=6000, scenario="002#12",
)  # fmt: skip
MONITORING = pytest.mark.bvj(
    segment="platform", goal="Operators see pools, reads and retries of the data layer",
    mrr=6000, scenario="001#65",
)  # fmt: skip
PIPELINE = pytest.mark.bvj(
    segment="platform", goal="Prometheus scrapes the data service in its own format",
    mrr=5000, scenario="002#8",
)  # fmt: skip

CONTRACT_METRICS = {
    "apex_data_pool_connections": "gauge",
    "apex_data_pool_wait_seconds": "histogram",
    "apex_data_replica_lag_bytes": "gauge",
    "apex_data_reads": "counter",
    "apex_data_outbox_pending": "gauge",
    "apex_data_relay_rows": "counter",
    "apex_data_cache_requests": "counter",
    "apex_data_retries": "counter",
    "apex_data_failovers": "counter",
}


@HEALTH
@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_healthz_has_a_check_per_store(data_client: httpx.AsyncClient) -> None:
    response = await data_client.get("/healthz")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "ok",
        "checks": {
            "postgres": "ok",
            "replica": "absent",
            "redis": "ok",
            "clickhouse": "ok",
            "auth": "ok",
        },
    }


@HEALTH
@pytest.mark.L3
async def test_healthz_is_503_while_redis_is_down(clean_platform: Platform) -> None:
    async with proxied_data(clean_platform, instance=4, via="redis") as data:
        data.proxy.down()
        response = await data.client.get("/healthz")
        assert response.status_code == 503, response.text
        body = response.json()
        assert body["status"] == "unavailable"
        assert body["checks"]["redis"].startswith("down")
        assert body["checks"]["postgres"] == "ok"
        data.proxy.up()

        async def healthy() -> bool:
            return (await data.client.get("/healthz")).status_code == 200

        await eventually(healthy, timeout=10, message="healthz back to 200 with Redis")


@HEALTH
@pytest.mark.L3
async def test_clickhouse_down_is_reported_but_not_fatal(clean_platform: Platform) -> None:
    async with proxied_data(clean_platform, instance=5, via="clickhouse") as data:
        data.proxy.down()

        async def reported() -> bool:
            response = await data.client.get("/healthz")
            return response.status_code == 200 and response.json()["checks"]["clickhouse"] != "ok"

        await eventually(reported, timeout=15, message="clickhouse reported down, service 200")


@MONITORING
@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@pytest.mark.parametrize("path", ["/metrics", "/admin/pools", "/admin/isolation"])
async def test_operator_routes_answer_the_admin_token_only(
    data_client: httpx.AsyncClient, admin_token: str, path: str
) -> None:
    missing = await data_client.get(path)
    assert missing.status_code == 401, missing.text
    wrong = await data_client.get(path, headers=bearer("not-the-admin-token"))
    assert wrong.status_code == 401, wrong.text
    assert error_of(wrong) == "invalid_token"
    right = await data_client.get(path, headers=admin_headers(admin_token))
    assert right.status_code == 200, right.text


@MONITORING
@pytest.mark.L2
@pytest.mark.L3
async def test_pools_report_their_size_and_use(data_with: Any, admin_token: str) -> None:
    client = await data_with(APEX_DB_POOL_SIZE="4")
    response = await client.get("/admin/pools", headers=admin_headers(admin_token))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["pools"]["replica"] is None
    primary = body["pools"]["primary"]
    assert (primary["name"], primary["size"], primary["in_use"], primary["waiting"]) == (
        "primary", 4, 0, 0,
    )  # fmt: skip
    assert body["replica"] == {"state": "absent", "lag_bytes": None, "error": None}


@MONITORING
@pytest.mark.L2
@pytest.mark.L3
async def test_metrics_move_with_reads_writes_and_pool_waits(
    data_client: httpx.AsyncClient, make_data_user: MakeUser, admin_token: str
) -> None:
    user = await make_data_user(permissions=(RUN_AGENTS, BILLING_READ))
    before = await metrics(data_client, admin_token)
    for _ in range(3):
        stored = await data_client.post(
            "/v1/usage", json=usage_body(user.user_id), headers=user.headers
        )
        assert stored.status_code == 201, stored.text
    for _ in range(2):
        # no-cache: both reads go to the database (a repeated read is a cache hit).
        read = await data_client.get(
            "/v1/usage/summary", headers={**user.headers, "Cache-Control": "no-cache"}
        )
        assert read.status_code == 200, read.text
    after = await metrics(data_client, admin_token)
    reads = "apex_data_reads_total"
    assert sample(after, reads, source="primary") - sample(before, reads, source="primary") == 2
    assert sample(after, reads, source="replica") == 0
    waits = "apex_data_pool_wait_seconds_count"
    assert sample(after, waits, pool="primary") - sample(before, waits, pool="primary") >= 5
    assert sample(after, "apex_data_pool_connections", pool="primary", state="in_use") == 0


@PIPELINE
@pytest.mark.L3
@pytest.mark.L4
async def test_metrics_are_prometheus_text_with_every_contract_metric(
    data_client: httpx.AsyncClient, admin_token: str
) -> None:
    response = await data_client.get("/metrics", headers=admin_headers(admin_token))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    families = {f.name: f.type for f in text_string_to_metric_families(response.text)}
    missing = {name: kind for name, kind in CONTRACT_METRICS.items() if families.get(name) != kind}
    assert missing == {}, f"missing or mistyped: {missing}; got {sorted(families)}"
