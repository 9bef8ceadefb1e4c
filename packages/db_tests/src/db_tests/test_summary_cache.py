"""001#60 cache coherency and 001#66 invalidation, for the usage summary: `GET
/v1/usage/summary` reads through apex.data's cache, and a write never leaves a stale
summary behind.

The rules under test (contract-data.md, Routes and Behaviours: Cache; notes-data.md):
a summary computed once is answered `source: cache` until a write of the tenant
(`POST /v1/usage` or `/v1/usage/batch`) bumps its generation, which drops every cached
window of that tenant and no other tenant's; a request with `X-Apex-Min-LSN` never takes
an entry computed before that position (even one whose invalidation was lost), and
replaces it; `Cache-Control: no-cache` is answered by the database.

Tests that count hits run an instance of their own without the background relay
(`flow_instance`): the relay bumps a tenant again once it has copied its write, which
would turn an expected hit into a miss at a moment no test controls. The L4 tests wait
for a hit with a deadline instead, and check every answer's totals.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from apex_testkit import Platform, eventually
from db_tests.client import BILLING_READ, RUN_AGENTS, DataUser, MakeUser, usage_body
from db_tests.faults import proxied_data
from db_tests.state import metrics, sample
from db_tests.stores import FlowInstance

COHERENCY = pytest.mark.bvj(
    segment="enterprise", goal="A cached summary never contradicts a write the caller saw",
    mrr=7000, scenario="001#60",
)  # fmt: skip
CASCADE = pytest.mark.bvj(
    segment="platform", goal="One write drops every cached view of its tenant, and only those",
    mrr=8000, scenario="001#66",
)  # fmt: skip

JANUARY = {"since": "2026-01-01T00:00:00Z", "until": "2026-02-01T00:00:00Z"}


@pytest.fixture
async def user(make_data_user: MakeUser) -> DataUser:
    return await make_data_user(permissions=(RUN_AGENTS, BILLING_READ))


async def _write(
    client: httpx.AsyncClient, user: DataUser, quantity: int, **fields: Any
) -> httpx.Response:
    body = usage_body(user.user_id, quantity=quantity, **fields)
    response = await client.post("/v1/usage", json=body, headers=user.headers)
    assert response.status_code == 201, response.text
    return response


async def _summary(
    client: httpx.AsyncClient,
    user: DataUser,
    *,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    """The tenant's total quantity of tokens in the window, and who answered."""
    response = await client.get(
        "/v1/usage/summary", params=params or {}, headers={**user.headers, **(headers or {})}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    return int(body["by_kind"].get("tokens", {}).get("quantity", 0)), str(body["source"])


@pytest.fixture
async def client(flow_instance: FlowInstance) -> AsyncIterator[httpx.AsyncClient]:
    """An instance of this test alone, without the background relay."""
    async with flow_instance() as opened:
        yield opened


async def _cached(client: httpx.AsyncClient, user: DataUser, total: int, **params: str) -> None:
    """Wait until the cache answers the summary (every answer has the right total)."""

    async def hit() -> bool:
        quantity, source = await _summary(client, user, params=params or None)
        assert quantity == total, f"{quantity} tokens answered by {source}, {total} written"
        return source == "cache"

    await eventually(hit, timeout=30, message="the summary answered by the cache")


@COHERENCY
@pytest.mark.L2
@pytest.mark.L3
async def test_a_summary_read_twice_is_answered_by_the_cache_and_counted(
    client: httpx.AsyncClient, user: DataUser, admin_token: str
) -> None:
    await _write(client, user, 5)
    before = await metrics(client, admin_token)
    assert await _summary(client, user) == (5, "primary")
    assert await _summary(client, user) == (5, "cache")
    assert await _summary(client, user) == (5, "cache")
    after = await metrics(client, admin_token)

    def grown(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grown("apex_data_cache_requests_total", result="miss") == 1
    assert grown("apex_data_cache_requests_total", result="hit") == 2
    assert grown("apex_data_reads_total", source="cache") == 2
    assert grown("apex_data_reads_total", source="primary") == 1


@CASCADE
@pytest.mark.L2
@pytest.mark.L3
async def test_a_write_drops_every_cached_window_of_its_tenant_only(
    client: httpx.AsyncClient, user: DataUser, make_data_user: MakeUser
) -> None:
    other = await make_data_user(permissions=(RUN_AGENTS, BILLING_READ))
    await _write(client, user, 2, occurred_at="2026-01-10T00:00:00Z")
    await _write(client, other, 9)
    for reader, windows in ((user, (2, 2)), (other, (9, 0))):
        for params, total in zip((None, JANUARY), windows, strict=True):
            assert (await _summary(client, reader, params=params))[1] == "primary"
            assert await _summary(client, reader, params=params) == (total, "cache")
    batch = [usage_body(user.user_id, quantity=10, occurred_at="2026-01-20T00:00:00Z")]
    stored = await client.post("/v1/usage/batch", json={"records": batch}, headers=user.headers)
    assert stored.status_code == 201, stored.text
    # Both of the writer's windows were dropped; the other tenant's entries stay.
    assert await _summary(client, user) == (12, "primary")
    assert await _summary(client, user, params=JANUARY) == (12, "primary")
    assert await _summary(client, other) == (9, "cache")
    assert await _summary(client, other, params=JANUARY) == (0, "cache")


@COHERENCY
@pytest.mark.L2
@pytest.mark.L3
async def test_a_write_is_seen_by_the_next_read_and_then_cached(
    client: httpx.AsyncClient, user: DataUser
) -> None:
    total = 0
    for quantity in (3, 4, 5):
        await _summary(client, user)
        await _write(client, user, quantity)
        total += quantity
        assert await _summary(client, user) == (total, "primary")
        assert await _summary(client, user) == (total, "cache")


@COHERENCY
@pytest.mark.L2
@pytest.mark.L3
async def test_a_min_lsn_never_takes_an_entry_from_before_a_lost_invalidation(
    client: httpx.AsyncClient, user: DataUser, flow_db: Any
) -> None:
    await _write(client, user, 4)
    await _summary(client, user)
    assert await _summary(client, user) == (4, "cache")
    # A record committed without the service's bump: what a write whose invalidation a
    # cut cache node missed leaves behind (no outbox row: no relay bumps it either).
    await flow_db.execute(
        "INSERT INTO usage_records (id, tenant_id, user_id, kind, quantity, cost_micros, "
        "idempotency_key, occurred_at) VALUES (gen_random_uuid(), $1::uuid, $2::uuid, "
        "'tokens', 6, 0, 'lost-bump', now())",
        user.tenant_id,
        user.user_id,
    )
    lsn = await flow_db.fetchval("SELECT pg_current_wal_insert_lsn()::text")
    assert await _summary(client, user, headers={"X-Apex-Min-LSN": lsn}) == (10, "primary")
    # The fresh summary replaced the stale entry: later reads take it from the cache.
    assert await _summary(client, user) == (10, "cache")


@COHERENCY
@pytest.mark.L3
async def test_a_write_whose_invalidation_redis_missed_is_still_read_by_its_writer(
    clean_platform: Platform, flow_database: str, user: DataUser
) -> None:
    async with proxied_data(
        clean_platform, instance=25, via="redis", APEX_DATABASE_URL=flow_database,
        APEX_OUTBOX_RELAY="off",
    ) as data:  # fmt: skip
        await _write(data.client, user, 3)
        await _summary(data.client, user)
        assert await _summary(data.client, user) == (3, "cache")
        data.proxy.reset_peers()  # every connection to Redis cut mid-stream
        data.proxy.down()
        # Stored (201), but the bump of the tenant's generation never reached Redis.
        written = await _write(data.client, user, 4)
        data.proxy.up()
        lsn = {"X-Apex-Min-LSN": written.headers["X-Apex-LSN"]}
        assert await _summary(data.client, user, headers=lsn) == (7, "primary")
        assert (await _summary(data.client, user, headers=lsn))[0] == 7


@COHERENCY
@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_every_read_after_a_write_sees_it(
    data_client: httpx.AsyncClient, user: DataUser
) -> None:
    total = 0
    for quantity in (3, 4, 5):
        await _cached(data_client, user, total)
        written = await _write(data_client, user, quantity)
        total += quantity
        lsn = {"X-Apex-Min-LSN": written.headers["X-Apex-LSN"]}
        assert (await _summary(data_client, user, headers=lsn))[0] == total
        assert (await _summary(data_client, user))[0] == total
    await _cached(data_client, user, total)


@COHERENCY
@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_no_cache_is_answered_by_the_database(
    data_client: httpx.AsyncClient, user: DataUser
) -> None:
    await _write(data_client, user, 8)
    await _cached(data_client, user, 8)
    assert await _summary(data_client, user, headers={"Cache-Control": "no-cache"}) == (
        8,
        "primary",
    )
