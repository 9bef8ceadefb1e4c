"""001#70 cache memory pressure: detection, the eviction policy at work, alerting.

The rules under test (contract-data.md, Cache): `GET /admin/cache/memory` reports each
cache node's memory as its Redis does (used, `maxmemory`, evicted keys), and `alert` once
a node is at or past APEX_CACHE_MEMORY_ALERT of its limit, or down; the metrics
`apex_data_cache_memory_bytes` and `apex_data_cache_evicted_keys` follow the same reading.
Under pressure, and with the node gone, the service keeps answering from PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from redis import Redis

from db_tests.client import BILLING_READ, MakeUser, OpenData, admin_headers
from db_tests.state import metrics, sample

PRESSURE = pytest.mark.bvj(
    segment="platform", goal="A cache node running out of memory is seen before it hurts",
    mrr=6000, scenario="001#66-75",
)  # fmt: skip
pytestmark = [PRESSURE, pytest.mark.L2, pytest.mark.L3]

LIMIT = 4 * 1024 * 1024
NO_CACHE = {"Cache-Control": "no-cache"}


async def _memory(client: httpx.AsyncClient, admin_token: str) -> dict[str, Any]:
    response = await client.get("/admin/cache/memory", headers=admin_headers(admin_token))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_node_past_the_threshold_alerts_and_its_evictions_are_counted(
    data_with: OpenData, make_data_user: MakeUser, redis_pair: Any, admin_token: str
) -> None:
    node = Redis.from_url(redis_pair.primary_url)
    node.config_set("maxmemory", LIMIT)
    node.config_set("maxmemory-policy", "allkeys-lru")
    client = await data_with(
        APEX_CACHE_REDIS_URLS=redis_pair.primary_url, APEX_CACHE_MEMORY_ALERT="0.8"
    )
    reader = await make_data_user(permissions=(BILLING_READ,))
    try:
        calm = await _memory(client, admin_token)
        assert calm["alert"] is False, calm
        ((before,),) = [calm["nodes"]]
        assert (before["state"], before["limit_bytes"], before["evicted_keys"]) == ("up", LIMIT, 0)
        assert 0 < before["pressure"] < 0.8

        # Fill the node past its limit: allkeys-lru evicts, and the used memory sits at it.
        for index in range(600):
            node.set(f"filler:{index}", b"x" * 20_000)
        pressed = await _memory(client, admin_token)
        ((after,),) = [pressed["nodes"]]
        assert pressed["alert"] is True, pressed
        assert after["evicted_keys"] > 0
        assert after["pressure"] >= 0.8
        samples = await metrics(client, admin_token)
        assert sample(samples, "apex_data_cache_evicted_keys", node="0") == after["evicted_keys"]
        assert sample(samples, "apex_data_cache_memory_bytes", node="0", kind="limit") == LIMIT

        # The pressure is the cache's problem, not the caller's.
        summary = await client.get("/v1/usage/summary", headers=reader.headers)
        assert summary.status_code == 200, summary.text
    finally:
        node.close()


async def test_a_cache_node_down_alerts_and_reads_go_on(
    data_with: OpenData, make_data_user: MakeUser, redis_pair: Any, admin_token: str
) -> None:
    client = await data_with(APEX_CACHE_REDIS_URLS=redis_pair.primary_url)
    reader = await make_data_user(permissions=(BILLING_READ,))
    assert (await _memory(client, admin_token))["alert"] is False

    redis_pair.kill_primary()

    report = await _memory(client, admin_token)
    assert (report["alert"], report["nodes"]) == (
        True,
        [{"node": 0, "state": "down", "alert": True}],
    )
    summary = await client.get("/v1/usage/summary", headers={**reader.headers, **NO_CACHE})
    assert summary.status_code == 200, summary.text
    cached_path = await client.get("/v1/usage/summary", headers=reader.headers)
    assert (cached_path.status_code, cached_path.json()["source"]) == (200, "primary")
