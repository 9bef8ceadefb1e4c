"""001#66-75 cache and state management, the sub-scenarios `test_cache.py` leaves out:
session state migration when nodes are added (72), a corrupt generation counter (73),
and, for the usage summary through the service, expiry (68), corruption recovery (73),
sync across instances and nodes (69) and failover to a promoted Redis replica (74).

The rules under test (contract-data.md, Behaviours: Cache; notes-data.md, cache):
nodes are added at the end of APEX_CACHE_REDIS_URLS; `Cache.migrate_from(old list)`
moves the current entries of the tenants the new nodes won, never a stale one (a tenant
invalidated before the move is left to recompute), and refuses a list the new one does
not start with; a generation counter that is not a number starts a generation no entry
was stored under; an entry lives APEX_CACHE_TTL seconds; a corrupt entry is a miss that
the next computation rebuilds; a write through one instance makes every instance's next
read compute afresh; with the cache's Redis replica promoted, an instance given its URL
keeps the entries replicated before the failover, and invalidates them on a write.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from redis import Redis

from apex.data.cache import SCHEMA_VERSION, Cache
from apex_testkit import RedisNamespace, RedisPair, eventually
from db_tests.client import BILLING_READ, RUN_AGENTS, DataUser, MakeUser, usage_body
from db_tests.stores import FlowInstance

CACHE = pytest.mark.bvj(
    segment="platform", goal="The cache stays fast, bounded and correct under pressure",
    mrr=60000, scenario="001#66-75",
)  # fmt: skip
pytestmark = [CACHE]


class Values:
    """Compute functions of known values, counting the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def of(self, value: dict[str, Any]) -> Any:
        async def compute() -> dict[str, Any]:
            self.calls += 1
            return dict(value)

        return compute


def _prefixed(nodes: Sequence[RedisNamespace]) -> str:
    """A key prefix of this test alone: a migration scans every entry under it."""
    return f"{nodes[0].prefix}{uuid.uuid4().hex[:8]}:"


@pytest.mark.L2
async def test_adding_a_node_migrates_the_current_entries_of_the_tenants_it_wins(
    redis_nodes: tuple[RedisNamespace, ...],
) -> None:
    urls, prefix = [n.url for n in redis_nodes], _prefixed(redis_nodes)
    before, after = Cache(urls[:2], prefix=prefix), Cache(urls, prefix=prefix)
    tenants = [str(uuid.uuid4()) for _ in range(60)]
    values = Values()
    try:
        for tenant in tenants:
            for part in ("credits", "usage:0:1"):
                await before.get_or_compute(tenant, values.of({"t": tenant, "p": part}), part)
        moved = [t for t in tenants if after.node_for(t) == 2]
        stayed = [t for t in tenants if after.node_for(t) != 2]
        assert moved, "the third node wins some of 60 tenants"
        # A write of one moving tenant before the move: its entries are stale, never moved.
        written = moved[0]
        assert await after.invalidate(written) == 3
        migrated = await after.migrate_from(urls[:2])
        assert (migrated.tenants, migrated.entries) == (len(moved) - 1, 2 * (len(moved) - 1))
        computed = values.calls
        for tenant in tenants:
            for part in ("credits", "usage:0:1"):
                value, result = await after.get_or_compute(
                    tenant, values.of({"t": tenant, "p": part, "recomputed": True}), part
                )
                expected = "miss" if tenant == written else "hit"
                assert (result, value["t"], value["p"]) == (expected, tenant, part)
        assert values.calls - computed == 2  # the written tenant's two entries only
        # The moved entries left their old node; the others stayed where they were.
        for index in (0, 1):
            old = Redis.from_url(urls[index])
            try:
                keys = {k.decode() for k in old.scan_iter(match=f"{prefix}*summary:*")}
            finally:
                old.close()
            assert not any(t in key for key in keys for t in moved if t != written)
        assert stayed
    finally:
        await before.close()
        await after.close()


@pytest.mark.L2
@pytest.mark.parametrize(
    "previous", [[1, 0], [2], [0, 1, 2, 3]], ids=["reordered", "not-first", "longer"]
)
async def test_a_migration_from_a_list_the_new_one_does_not_start_with_is_refused(
    redis_nodes: tuple[RedisNamespace, ...], previous: list[int]
) -> None:
    urls = [n.url for n in redis_nodes] + ["redis://127.0.0.1:9/0"]
    cache = Cache(urls[:3], prefix=_prefixed(redis_nodes))
    try:
        with pytest.raises(ValueError, match="must be the start of the new one"):
            await cache.migrate_from([urls[i] for i in previous])
    finally:
        await cache.close()


@pytest.mark.L2
async def test_a_corrupt_generation_counter_is_a_new_generation(
    redis_nodes: tuple[RedisNamespace, ...],
) -> None:
    url = redis_nodes[0].url
    cache = Cache([url], prefix=_prefixed(redis_nodes))
    tenant, values = str(uuid.uuid4()), Values()
    raw = Redis.from_url(url, decode_responses=True)
    try:
        assert (await cache.get_or_compute(tenant, values.of({"v": 1})))[1] == "miss"
        raw.set(cache.generation_key(tenant), "not a number")
        # The entry stored under generation 0 is out of reach: computed again, stored anew.
        assert await cache.get_or_compute(tenant, values.of({"v": 2})) == ({"v": 2}, "miss")
        assert await cache.get_or_compute(tenant, values.of({"v": 3})) == ({"v": 2}, "hit")
        assert int(raw.get(cache.generation_key(tenant)) or "0") > 0
        assert await cache.invalidate(tenant) == 1
        assert await cache.get_or_compute(tenant, values.of({"v": 4})) == ({"v": 4}, "miss")
    finally:
        await cache.close()
        raw.close()


# -- through the service: the usage summary ---------------------------------------------


@pytest.fixture
async def user(make_data_user: MakeUser) -> DataUser:
    return await make_data_user(permissions=(RUN_AGENTS, BILLING_READ))


async def _write(client: httpx.AsyncClient, user: DataUser, quantity: int) -> None:
    body = usage_body(user.user_id, quantity=quantity)
    response = await client.post("/v1/usage", json=body, headers=user.headers)
    assert response.status_code == 201, response.text


async def _summary(client: httpx.AsyncClient, user: DataUser) -> tuple[int, str]:
    response = await client.get("/v1/usage/summary", headers=user.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    return int(body["by_kind"].get("tokens", {}).get("quantity", 0)), str(body["source"])


def _entry_keys(url: str, prefix: str, tenant: str) -> list[str]:
    raw = Redis.from_url(url, decode_responses=True)
    try:
        pattern = f"{prefix}data:v{SCHEMA_VERSION}:summary:{tenant}:*"
        return [k for k in raw.scan_iter(match=pattern) if not k.endswith(":lock")]
    finally:
        raw.close()


@pytest.mark.L2
@pytest.mark.L3
async def test_a_summary_expires_after_the_cache_ttl_and_is_computed_again(
    flow_instance: FlowInstance, user: DataUser
) -> None:
    async with flow_instance(APEX_CACHE_TTL="0.5") as client:
        await _write(client, user, 6)
        assert await _summary(client, user) == (6, "primary")
        seen: list[str] = []

        async def expired() -> bool:
            quantity, source = await _summary(client, user)
            assert quantity == 6
            seen.append(source)
            return source == "primary"

        await eventually(expired, timeout=15, message="the cached summary expired")
        assert await _summary(client, user) == (6, "cache")


@pytest.mark.L2
@pytest.mark.L3
async def test_a_corrupt_summary_entry_is_answered_by_the_database_and_rebuilt(
    flow_instance: FlowInstance, user: DataUser, redis_namespace: RedisNamespace
) -> None:
    async with flow_instance() as client:
        await _write(client, user, 7)
        await _summary(client, user)
        assert await _summary(client, user) == (7, "cache")
        keys = _entry_keys(redis_namespace.url, redis_namespace.prefix, user.tenant_id or "")
        assert len(keys) == 1, keys
        raw = Redis.from_url(redis_namespace.url)
        try:
            for garbage in (b"\xff\xfe not json", b'{"v": 99, "value": {}}'):
                raw.set(keys[0], garbage)
                assert await _summary(client, user) == (7, "primary")
                assert await _summary(client, user) == (7, "cache")
        finally:
            raw.close()


@pytest.mark.L2
@pytest.mark.L3
async def test_a_write_through_one_instance_reaches_the_summary_of_another(
    flow_instance: FlowInstance, user: DataUser, redis_nodes: tuple[RedisNamespace, ...]
) -> None:
    nodes = ",".join(n.url for n in redis_nodes)
    async with (
        flow_instance(APEX_CACHE_REDIS_URLS=nodes) as first,
        flow_instance(APEX_CACHE_REDIS_URLS=nodes) as second,
    ):
        await _write(first, user, 1)
        for client in (first, second):
            await _summary(client, user)
            assert await _summary(client, user) == (1, "cache")
        await _write(second, user, 10)
        assert await _summary(first, user) == (11, "primary")
        assert await _summary(second, user) == (11, "cache")


@pytest.mark.L2
@pytest.mark.L3
async def test_after_a_redis_failover_the_promoted_replica_serves_and_invalidates(
    flow_instance: FlowInstance, user: DataUser, redis_pair: RedisPair
) -> None:
    async with flow_instance(APEX_CACHE_REDIS_URLS=redis_pair.primary_url) as before:
        await _write(before, user, 4)
        await _summary(before, user)
        assert await _summary(before, user) == (4, "cache")
    # The instance's entries live under its APEX_REDIS_PREFIX on the replica too.
    prefix = _service_prefix(redis_pair.primary_url, user.tenant_id or "")

    async def replicated() -> bool:
        return bool(_entry_keys(redis_pair.replica.url, prefix, user.tenant_id or ""))

    await eventually(replicated, timeout=10, message="the summary entry on the replica")
    redis_pair.kill_primary()
    redis_pair.promote()
    async with flow_instance(APEX_CACHE_REDIS_URLS=redis_pair.replica.url) as after:
        assert await _summary(after, user) == (4, "cache")
        await _write(after, user, 5)
        assert await _summary(after, user) == (9, "primary")
        assert await _summary(after, user) == (9, "cache")


def _service_prefix(url: str, tenant: str) -> str:
    """The key prefix the service stored `tenant`'s entry under on `url`."""
    raw = Redis.from_url(url, decode_responses=True)
    try:
        marker = f"data:v{SCHEMA_VERSION}:summary:{tenant}:"
        keys = list(raw.scan_iter(match=f"*{marker}*"))
    finally:
        raw.close()
    assert keys, f"no summary entry of {tenant} on {url}"
    return str(keys[0]).split(marker, 1)[0]
