"""001#60 cache coherency, 001#66-75 cache and state management, 002#3 cache
invalidation with several Redis nodes: `apex.data.cache` on real Redis servers (the
kit's three extra nodes, a test's own master+replica pair), and the cached balance of
`GET /v1/credits` through the service.

The rules under test (contract-data.md, Behaviours: Cache; notes-data.md, cache):
versioned keys `<prefix>data:v1:summary:<tenant>:<generation>[:part]`; a write bumps
the tenant's generation on every node, which invalidates all its entries at once; one
recompute per key under load; a corrupt entry is a miss and is deleted; under a real
`maxmemory` with `allkeys-lru` evicted entries are misses, never errors; a node that is
down means misses, not errors; with a replica promoted the cache follows the URL it is
given; rendezvous hashing moves only the tenants a new node wins; hits and misses are
counted.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from apex.data.cache import SCHEMA_VERSION, Cache, rendezvous_node
from apex_testkit import RedisNamespace, eventually
from db_tests.client import BILLING_READ, BILLING_WRITE, MakeUser
from db_tests.faults import proxied_data
from db_tests.stores import FlowInstance

COHERENCY = pytest.mark.bvj(
    segment="enterprise", goal="Cached numbers never contradict the database",
    mrr=7000, scenario="001#60",
)  # fmt: skip
CACHE = pytest.mark.bvj(
    segment="platform", goal="The cache stays fast, bounded and correct under pressure",
    mrr=60000, scenario="001#66-75",
)  # fmt: skip
NODES = pytest.mark.bvj(
    segment="platform", goal="Every cache node forgets what a write changed",
    mrr=25000, scenario="002#3",
)  # fmt: skip


class Counter:
    """A compute function that counts its calls and returns `value`."""

    def __init__(self, value: dict[str, Any] | None = None) -> None:
        self.calls = 0
        self.value = value or {"n": 1}

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        return dict(self.value)


def urls(nodes: Sequence[RedisNamespace]) -> list[str]:
    return [node.url for node in nodes]


def raw(url: str) -> Redis:
    return Redis.from_url(url, decode_responses=True)


@CACHE
@pytest.mark.L2
async def test_one_bump_invalidates_every_entry_of_the_tenant_only(
    redis_nodes: tuple[RedisNamespace, ...],
) -> None:
    cache = Cache(urls(redis_nodes), prefix=redis_nodes[0].prefix)
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    compute = Counter()
    try:
        for tenant in (alice, bob):
            for part in ("summary", "credits"):
                assert (await cache.get_or_compute(tenant, compute, part))[1] == "miss"
                assert (await cache.get_or_compute(tenant, compute, part))[1] == "hit"
        assert await cache.invalidate(alice) == len(redis_nodes)
        # Every node holds the bumped generation, whichever owns alice's entries.
        for node in redis_nodes:
            assert raw(node.url).get(cache.generation_key(alice)) == "1"
        assert [
            (await cache.get_or_compute(alice, compute, p))[1] for p in ("summary", "credits")
        ] == ["miss", "miss"]
        assert [
            (await cache.get_or_compute(bob, compute, p))[1] for p in ("summary", "credits")
        ] == ["hit", "hit"]
        assert (cache.hits, cache.misses) == (6, 6)
    finally:
        await cache.close()


@CACHE
@pytest.mark.L2
async def test_keys_are_versioned_and_live_on_their_rendezvous_node(
    redis_nodes: tuple[RedisNamespace, ...],
) -> None:
    cache = Cache(urls(redis_nodes), prefix=redis_nodes[0].prefix, ttl=60)
    tenant = str(uuid.uuid4())
    try:
        await cache.get_or_compute(tenant, Counter(), "summary")
        key = f"{redis_nodes[0].prefix}data:v{SCHEMA_VERSION}:summary:{tenant}:0:summary"
        owner = cache.node_for(tenant)
        holders = [i for i, node in enumerate(redis_nodes) if raw(node.url).exists(key)]
        assert holders == [owner]
        # The entry expires on its own (APEX_CACHE_TTL): a TTL no longer than the setting.
        assert 0 < raw(redis_nodes[owner].url).pttl(key) <= 60_000
    finally:
        await cache.close()


@CACHE
@pytest.mark.L2
async def test_expired_entries_are_recomputed(redis_nodes: tuple[RedisNamespace, ...]) -> None:
    cache = Cache(urls(redis_nodes)[:1], prefix=redis_nodes[0].prefix, ttl=0.2)
    tenant, compute = str(uuid.uuid4()), Counter()
    try:
        await cache.get_or_compute(tenant, compute)
        key = cache.entry_key(tenant, 0)
        node = raw(redis_nodes[0].url)

        async def expired() -> bool:
            return not node.exists(key)

        await eventually(expired, timeout=10, message="the entry expired")
        assert (await cache.get_or_compute(tenant, compute))[1] == "miss"
        assert compute.calls == 2
    finally:
        await cache.close()


@CACHE
@pytest.mark.L2
async def test_warming_makes_the_first_read_a_hit(redis_nodes: tuple[RedisNamespace, ...]) -> None:
    cache = Cache(urls(redis_nodes), prefix=redis_nodes[0].prefix)
    tenants = [str(uuid.uuid4()) for _ in range(5)]
    compute = Counter({"warm": True})
    try:
        assert [await cache.warm(t, compute) for t in tenants] == [True] * 5
        results = [await cache.get_or_compute(t, compute) for t in tenants]
        assert results == [({"warm": True}, "hit")] * 5
        assert compute.calls == 5
    finally:
        await cache.close()


@CACHE
@pytest.mark.L2
async def test_corrupt_entries_are_misses_and_deleted(
    redis_nodes: tuple[RedisNamespace, ...],
) -> None:
    cache = Cache(urls(redis_nodes)[:1], prefix=redis_nodes[0].prefix)
    node = raw(redis_nodes[0].url)
    compute = Counter({"good": 1})
    try:
        for garbage in ("{not json", json.dumps({"v": SCHEMA_VERSION + 1, "value": {}}), "[]"):
            tenant = str(uuid.uuid4())
            node.set(cache.entry_key(tenant, 0), garbage)
            assert await cache.get_or_compute(tenant, compute) == ({"good": 1}, "miss")
            # Rebuilt: the entry now holds the recomputed value in the current schema.
            stored = json.loads(node.get(cache.entry_key(tenant, 0)) or "null")
            assert stored == {"v": SCHEMA_VERSION, "value": {"good": 1}}
    finally:
        await cache.close()


@CACHE
@pytest.mark.L2
async def test_one_recompute_per_key_under_load(redis_nodes: tuple[RedisNamespace, ...]) -> None:
    cache = Cache(urls(redis_nodes), prefix=redis_nodes[0].prefix, lock_ttl=10)
    tenant = str(uuid.uuid4())
    release = asyncio.Event()
    calls = 0

    async def slow() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await release.wait()
        return {"total": 42}

    try:
        readers = [asyncio.create_task(cache.get_or_compute(tenant, slow)) for _ in range(50)]
        await eventually(lambda: _true(calls == 1), timeout=10, message="one recompute started")
        release.set()
        results = await asyncio.gather(*readers)
        assert calls == 1
        assert {json.dumps(value) for value, _ in results} == {json.dumps({"total": 42})}
        assert sorted(result for _, result in results).count("miss") == 1
    finally:
        await cache.close()


async def _true(value: bool) -> bool:
    return value


@CACHE
@pytest.mark.L2
async def test_a_node_that_is_down_means_misses_not_errors(
    redis_nodes: tuple[RedisNamespace, ...],
) -> None:
    dead = "redis://127.0.0.1:9/0"  # discard port: nothing listens
    cache = Cache([dead], prefix="x:", timeout=0.5)
    compute = Counter({"from": "postgres"})
    try:
        assert await cache.get_or_compute(str(uuid.uuid4()), compute) == (
            {"from": "postgres"}, "miss"
        )  # fmt: skip
        assert await cache.invalidate(str(uuid.uuid4())) == 0
        assert await cache.ping() == [False]
    finally:
        await cache.close()


@CACHE
@pytest.mark.L2
async def test_adding_a_node_moves_only_the_tenants_it_wins() -> None:
    nodes = [f"redis://10.0.0.{n}:6379/0" for n in range(1, 5)]
    tenants = [str(uuid.uuid4()) for _ in range(400)]
    before = {t: rendezvous_node(t, nodes[:3]) for t in tenants}
    after = {t: rendezvous_node(t, nodes) for t in tenants}
    moved = [t for t in tenants if before[t] != after[t]]
    assert moved, "a fourth node wins some tenants"
    assert all(after[t] == 3 for t in moved)
    # Spread: each node owns a fair share (400 tenants, 4 nodes).
    assert min(list(after.values()).count(n) for n in range(4)) > 50


@CACHE
@pytest.mark.L2
async def test_memory_pressure_evictions_are_misses(redis_pair: Any) -> None:
    admin = Redis.from_url(redis_pair.primary_url)
    admin.config_set("maxmemory", 2 * 1024 * 1024)
    admin.config_set("maxmemory-policy", "allkeys-lru")
    cache = Cache([redis_pair.primary_url], prefix="mem:")
    tenants = [str(uuid.uuid4()) for _ in range(400)]
    try:
        for tenant in tenants:
            await cache.get_or_compute(tenant, Counter({"tenant": tenant, "pad": "x" * 20_000}))
        assert int(admin.info("stats")["evicted_keys"]) > 0
        # Every read is right, hit or miss: evicted entries are recomputed.
        for tenant in tenants:
            value, _ = await cache.get_or_compute(tenant, Counter({"tenant": tenant, "pad": ""}))
            assert value["tenant"] == tenant
        assert cache.hits + cache.misses == 800
        assert cache.misses > 400
    finally:
        await cache.close()
        admin.close()


@CACHE
@pytest.mark.L2
async def test_with_the_replica_promoted_the_cache_follows_its_url(redis_pair: Any) -> None:
    tenant = str(uuid.uuid4())
    primary = Cache([redis_pair.primary_url], prefix="ha:")
    try:
        await primary.get_or_compute(tenant, Counter({"v": 1}))
    finally:
        await primary.close()
    replica = Redis.from_url(redis_pair.replica.url, decode_responses=True)

    async def replicated() -> bool:
        return bool(replica.exists(f"ha:data:v{SCHEMA_VERSION}:summary:{tenant}:0"))

    await eventually(replicated, timeout=10, message="the entry on the replica")
    redis_pair.kill_primary()
    redis_pair.promote()
    promoted = Cache([redis_pair.replica.url], prefix="ha:")
    try:
        assert await promoted.get_or_compute(tenant, Counter({"v": 2})) == ({"v": 1}, "hit")
        assert await promoted.invalidate(tenant) == 1
        assert await promoted.get_or_compute(tenant, Counter({"v": 2})) == ({"v": 2}, "miss")
    finally:
        await promoted.close()
        replica.close()


async def cache_counts(client: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, float]:
    response = await client.get("/metrics", headers=admin)
    assert response.status_code == 200, response.text
    counts = {"hit": 0.0, "miss": 0.0}
    for family in text_string_to_metric_families(response.text):
        if family.name == "apex_data_cache_requests":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["result"]] = sample.value
    return counts


@COHERENCY
@pytest.mark.L2
@pytest.mark.L3
async def test_balances_stay_coherent_across_nodes_and_are_counted(
    flow_instance: FlowInstance,
    make_data_user: MakeUser,
    flow_db: Any,
    data_admin: dict[str, str],
    redis_nodes: tuple[RedisNamespace, ...],
    redis_namespace: RedisNamespace,
) -> None:
    sender = await make_data_user(permissions=(BILLING_WRITE, BILLING_READ))
    receiver = str(uuid.uuid4())
    await flow_db.execute(
        "INSERT INTO tenant_credits (tenant_id, balance_micros) VALUES ($1::uuid, 500)",
        sender.tenant_id,
    )
    async with flow_instance(APEX_CACHE_REDIS_URLS=",".join(urls(redis_nodes))) as client:
        reads = [await client.get("/v1/credits", headers=sender.headers) for _ in range(3)]
        assert [r.json()["source"] for r in reads] == ["primary", "cache", "cache"]
        moved = await client.post(
            "/v1/credits/transfer",
            json={"to_tenant": receiver, "amount_micros": 200, "idempotency_key": "k1"},
            headers=sender.headers,
        )
        assert moved.status_code == 201, moved.text
        fresh = await client.get("/v1/credits", headers=sender.headers)
        assert fresh.json() == {
            "tenant_id": sender.tenant_id, "balance_micros": 300, "source": "primary"
        }  # fmt: skip
        # The write bumped the sender's generation on every node.
        generations = {
            raw(node.url).get(
                f"{redis_namespace.prefix}data:v{SCHEMA_VERSION}:gen:{sender.tenant_id}"
            )
            for node in redis_nodes
        }
        assert generations == {"1"}
        assert await cache_counts(client, data_admin) == {"hit": 2.0, "miss": 2.0}


@NODES
@pytest.mark.L3
async def test_a_write_through_one_instance_invalidates_another_on_every_node(
    flow_instance: FlowInstance,
    make_data_user: MakeUser,
    flow_db: Any,
    redis_nodes: tuple[RedisNamespace, ...],
) -> None:
    sender = await make_data_user(permissions=(BILLING_WRITE, BILLING_READ))
    receiver = await make_data_user(permissions=(BILLING_READ,))
    await flow_db.executemany(
        "INSERT INTO tenant_credits (tenant_id, balance_micros) VALUES ($1::uuid, $2)",
        [(sender.tenant_id, 900), (receiver.tenant_id, 100)],
    )
    nodes = ",".join(urls(redis_nodes))
    async with (
        flow_instance(APEX_CACHE_REDIS_URLS=nodes) as first,
        flow_instance(APEX_CACHE_REDIS_URLS=nodes) as second,
    ):
        for user in (sender, receiver):
            await first.get("/v1/credits", headers=user.headers)
            cached = await first.get("/v1/credits", headers=user.headers)
            assert cached.json()["source"] == "cache"
        moved = await second.post(
            "/v1/credits/transfer",
            json={"to_tenant": receiver.tenant_id, "amount_micros": 400, "idempotency_key": "x"},
            headers=sender.headers,
        )
        assert moved.status_code == 201, moved.text
        balances = [
            (await first.get("/v1/credits", headers=user.headers)).json()
            for user in (sender, receiver)
        ]
    assert [(b["balance_micros"], b["source"]) for b in balances] == [
        (500, "primary"), (500, "primary")
    ]  # fmt: skip


@CACHE
@pytest.mark.L2
@pytest.mark.L3
async def test_one_recompute_and_a_high_hit_rate_under_load(
    flow_instance: FlowInstance,
    make_data_user: MakeUser,
    flow_db: Any,
    data_admin: dict[str, str],
) -> None:
    user = await make_data_user(permissions=(BILLING_READ,))
    await flow_db.execute(
        "INSERT INTO tenant_credits (tenant_id, balance_micros) VALUES ($1::uuid, 42)",
        user.tenant_id,
    )
    async with flow_instance() as client:
        answers = await asyncio.gather(
            *(client.get("/v1/credits", headers=user.headers) for _ in range(40))
        )
        assert [a.status_code for a in answers] == [200] * 40
        assert {a.json()["balance_micros"] for a in answers} == {42}
        # One request computed from PostgreSQL; the others waited for its entry.
        assert await cache_counts(client, data_admin) == {"hit": 39.0, "miss": 1.0}


@CACHE
@pytest.mark.L3
async def test_a_cache_node_cut_means_misses_not_errors(
    clean_platform: Any,
    flow_database: str,
    make_data_user: MakeUser,
    flow_db: Any,
    data_admin: dict[str, str],
) -> None:
    user = await make_data_user(permissions=(BILLING_READ,))
    await flow_db.execute(
        "INSERT INTO tenant_credits (tenant_id, balance_micros) VALUES ($1::uuid, 7)",
        user.tenant_id,
    )
    async with proxied_data(
        clean_platform, instance=24, via="redis", APEX_DATABASE_URL=flow_database,
        APEX_OUTBOX_RELAY="off",
    ) as data:  # fmt: skip
        await data.client.get("/v1/credits", headers=user.headers)
        data.proxy.reset_peers()  # every connection to Redis cut mid-stream
        data.proxy.down()
        cut = [await data.client.get("/v1/credits", headers=user.headers) for _ in range(3)]
        assert [(r.status_code, r.json()["source"]) for r in cut] == [(200, "primary")] * 3
        assert {r.json()["balance_micros"] for r in cut} == {7}
        data.proxy.up()
        back = await data.client.get("/v1/credits", headers=user.headers)
        assert (back.status_code, back.json()["source"]) == (200, "cache")
        assert await cache_counts(data.client, data_admin) == {"hit": 1.0, "miss": 4.0}


@CACHE
@pytest.mark.L2
@pytest.mark.L3
async def test_warming_through_the_admin_route(
    flow_instance: FlowInstance,
    make_data_user: MakeUser,
    flow_db: Any,
    data_admin: dict[str, str],
) -> None:
    user = await make_data_user(permissions=(BILLING_READ,))
    await flow_db.execute(
        "INSERT INTO tenant_credits (tenant_id, balance_micros) VALUES ($1::uuid, 77)",
        user.tenant_id,
    )
    async with flow_instance() as client:
        warmed = await client.post(
            "/admin/cache/warm", json={"tenant_ids": [user.tenant_id]}, headers=data_admin
        )
        assert warmed.status_code == 200, warmed.text
        assert warmed.json() == {"warmed": 1, "tenants": 1}
        first = await client.get("/v1/credits", headers=user.headers)
        assert first.json() == {
            "tenant_id": user.tenant_id, "balance_micros": 77, "source": "cache"
        }  # fmt: skip
