"""001#67 cache warming: priority-based, scheduled, monitored.

The rules under test (contract-data.md, Cache; notes-data.md, warming): `POST
/admin/cache/warm {"top": N}` computes the cached balances of the N tenants with the
highest cost over the last days (`usage_daily`), busiest first, so their first read is a
hit; with APEX_CACHE_WARM_INTERVAL set the service does it on its own every interval for
the APEX_CACHE_WARM_TOP busiest; `apex_data_cache_warmed` counts what was warmed.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from apex_testkit import eventually
from db_tests.client import BILLING_READ, DataUser, MakeUser, error_of
from db_tests.state import metrics, sample
from db_tests.stores import write_usage

WARMING = pytest.mark.bvj(
    segment="platform", goal="The busiest tenants' first read is already fast",
    mrr=5000, scenario="001#66-75",
)  # fmt: skip
pytestmark = [WARMING, pytest.mark.L2, pytest.mark.L3]


async def _tenants_by_cost(make_data_user: MakeUser, flow_db: Any) -> list[DataUser]:
    """Three users of their own tenants, spending 300, 200 and 100 (in that order), each
    with a credit balance of its cost; the daily view not yet refreshed."""
    users = [await make_data_user(permissions=(BILLING_READ,)) for _ in range(3)]
    for user, cost in zip(users, (300, 200, 100), strict=True):
        assert user.tenant_id is not None
        await write_usage(flow_db, user.tenant_id, user.user_id, cost_micros=cost)
        await flow_db.execute(
            "INSERT INTO tenant_credits (tenant_id, balance_micros) VALUES ($1::uuid, $2)",
            user.tenant_id,
            cost,
        )
    return users


async def _refresh(client: httpx.AsyncClient, data_admin: dict[str, str]) -> None:
    refreshed = await client.post("/admin/views/refresh", headers=data_admin)
    assert refreshed.status_code == 200, refreshed.text


async def _source(client: httpx.AsyncClient, user: DataUser) -> tuple[int, str]:
    balance = await client.get("/v1/credits", headers=user.headers)
    assert balance.status_code == 200, balance.text
    return balance.json()["balance_micros"], balance.json()["source"]


async def test_the_busiest_tenants_are_warmed_first_and_counted(
    flow_instance: Any,
    make_data_user: MakeUser,
    flow_db: Any,
    data_admin: dict[str, str],
    admin_token: str,
) -> None:
    busiest, second, quiet = await _tenants_by_cost(make_data_user, flow_db)
    async with flow_instance() as client:
        await _refresh(client, data_admin)
        for body in ({}, {"top": 2, "tenant_ids": [quiet.tenant_id]}, {"top": 0}):
            refused = await client.post("/admin/cache/warm", json=body, headers=data_admin)
            assert (refused.status_code, error_of(refused)) == (422, "invalid_request"), body
        assert sample(await metrics(client, admin_token), "apex_data_cache_warmed_total") == 0

        warmed = await client.post("/admin/cache/warm", json={"top": 2}, headers=data_admin)

        assert warmed.status_code == 200, warmed.text
        assert warmed.json() == {
            "warmed": 2,
            "tenants": 2,
            "order": [busiest.tenant_id, second.tenant_id],
        }
        assert await _source(client, busiest) == (300, "cache")
        assert await _source(client, second) == (200, "cache")
        assert await _source(client, quiet) == (100, "primary")
        assert sample(await metrics(client, admin_token), "apex_data_cache_warmed_total") == 2


async def test_scheduled_warming_keeps_the_top_tenants_warm(
    flow_instance: Any,
    make_data_user: MakeUser,
    flow_db: Any,
    data_admin: dict[str, str],
    admin_token: str,
) -> None:
    busiest, second, _ = await _tenants_by_cost(make_data_user, flow_db)
    settings = {"APEX_CACHE_WARM_INTERVAL": "0.05", "APEX_CACHE_WARM_TOP": "1"}
    async with flow_instance(**settings) as client:
        await _refresh(client, data_admin)

        async def warmed() -> bool:
            samples = await metrics(client, admin_token)
            return sample(samples, "apex_data_cache_warmed_total") >= 1

        await eventually(warmed, timeout=15, message="a scheduled warming round")
        assert await _source(client, busiest) == (300, "cache")
        assert await _source(client, second) == (200, "primary")
