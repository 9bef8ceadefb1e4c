"""Permission cache and revocation cache against a real Redis (two 'instances')."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from apex.auth.permcache import PERMISSIONS_CHANGED, PermissionCache
from apex.auth.resilience import Resilience
from apex_testkit import eventually


class FakePool:
    """Enough of asyncpg.Pool for the cache: acquire() yields nothing useful."""

    def acquire(self) -> Any:
        pool = self

        class _Acquire:
            async def __aenter__(self) -> Any:
                return pool

            async def __aexit__(self, *exc: object) -> None:
                return None

        return _Acquire()


@pytest.fixture(name="redis")
async def _redis(redis_namespace: Any) -> AsyncIterator[tuple[Redis, str]]:
    redis = Redis.from_url(redis_namespace.url, decode_responses=True)
    prefix = f"{redis_namespace.prefix}t{uuid.uuid4().hex[:8]}:"
    try:
        yield redis, prefix
    finally:
        keys = [key async for key in redis.scan_iter(match=f"{prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


async def _instance(
    redis: Redis, prefix: str, truth: dict[str, list[str]], loads: list[str]
) -> tuple[Resilience, PermissionCache]:
    async def loader(conn: asyncpg.Connection, user_id: uuid.UUID) -> list[str]:
        loads.append(str(user_id))
        return list(truth.get(str(user_id), []))

    resilience = Resilience(
        redis, prefix=prefix, probe_interval=0.1, max_staleness=5, revocation_ttl=60
    )
    cache = PermissionCache(
        redis,
        FakePool(),
        prefix=prefix,
        channel=resilience.channel,
        loader=loader,
    )
    resilience.on_event(PERMISSIONS_CHANGED, cache.handle_event)
    resilience.on_subscription(cache.subscribed, cache.unsubscribed)
    resilience.on_recovery(cache.recovered)
    await resilience.start()
    return resilience, cache


async def test_a_change_on_one_instance_is_seen_by_the_other(redis: tuple[Redis, str]) -> None:
    client, prefix = redis
    uid = str(uuid.uuid4())
    truth = {uid: ["a:read"]}
    loads_a: list[str] = []
    loads_b: list[str] = []
    res_a, cache_a = await _instance(client, prefix, truth, loads_a)
    res_b, cache_b = await _instance(client, prefix, truth, loads_b)
    try:
        assert await cache_a.get(uid) == ["a:read"]
        assert await cache_b.get(uid) == ["a:read"]  # from Redis
        assert await cache_b.get(uid) == ["a:read"]  # from memory
        assert (len(loads_a), len(loads_b)) == (1, 0)
        truth[uid] = ["a:read", "b:write"]
        await cache_a.invalidate([uid])

        async def dropped_by_b() -> bool:
            return uid not in cache_b._memory

        await eventually(dropped_by_b, timeout=5, message="B drops its entry on the event")
        assert await cache_b.get(uid) == ["a:read", "b:write"]
        assert await client.exists(cache_a.key(uid)) == 1
    finally:
        await res_a.stop()
        await res_b.stop()


async def test_a_load_that_raced_an_invalidation_is_not_stored(redis: tuple[Redis, str]) -> None:
    client, prefix = redis
    uid = str(uuid.uuid4())
    gate = asyncio.Event()
    release = asyncio.Event()

    async def slow_loader(conn: asyncpg.Connection, user_id: uuid.UUID) -> list[str]:
        gate.set()
        await release.wait()
        return ["stale:perm"]

    resilience = Resilience(
        client, prefix=prefix, probe_interval=0.1, max_staleness=5, revocation_ttl=60
    )
    cache = PermissionCache(
        client,
        FakePool(),
        prefix=prefix,
        channel=resilience.channel,
        loader=slow_loader,
    )
    load = asyncio.create_task(cache.get(uid))
    await gate.wait()
    await cache.invalidate([uid])  # the change commits while the load is in flight
    release.set()
    assert await load == ["stale:perm"]
    assert await client.exists(cache.key(uid)) == 0


async def test_revocations_reach_other_instances(redis: tuple[Redis, str]) -> None:
    client, prefix = redis
    res_a, _ = await _instance(client, prefix, {}, [])
    res_b, _ = await _instance(client, prefix, {}, [])
    try:
        await res_a.record_revocation("s1", ttl=60)
        assert res_a.is_revoked("s1")
        assert await client.zscore(res_a.revoked_key, "s1") is not None
        # B learns it at its next sync (every probe interval) ...
        assert await res_b.probe() == "ok"
        assert res_b.is_revoked("s1")
        # ... or from the event.
        await client.publish(
            res_a.channel, '{"type": "session.revoked", "session_id": "s2", "user_id": "u"}'
        )

        async def learned_by_b() -> bool:
            return res_b.is_revoked("s2")

        await eventually(learned_by_b, timeout=5, message="B learns s2 from the event")
        assert not res_b.is_revoked("s3")
    finally:
        await res_a.stop()
        await res_b.stop()


async def test_a_reset_forgets_what_a_fresh_instance_would_not_know(
    redis: tuple[Redis, str],
) -> None:
    """What apex.auth.reset_memory relies on: after the servers were emptied, a reset
    instance knows no revocation, no cached permission and no outage of before."""
    client, prefix = redis
    loads: list[str] = []
    truth = {str(uuid.uuid4()): ["agents:read"]}
    (user_id,) = truth
    resilience, cache = await _instance(client, prefix, truth, loads)
    try:
        await resilience.record_revocation("s1", ttl=60)
        assert await cache.get(user_id) == ["agents:read"]
        assert await cache.get(user_id) == ["agents:read"]
        assert loads == [user_id], "the second read came from memory or Redis"
        resilience.mark_down(ConnectionError("gone"))
        assert resilience.degraded
        await client.delete(resilience.revoked_key, cache.key(user_id))  # the servers emptied

        await resilience.reset()
        cache.reset()

        assert not resilience.is_revoked("s1")
        assert (resilience.mode, resilience.last_error) == ("normal", "")
        assert await cache.get(user_id) == ["agents:read"]
        assert loads == [user_id, user_id], "the reset cache loaded again"
    finally:
        await resilience.stop()


async def test_an_unreachable_redis_degrades_and_the_probe_survives() -> None:
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    resilience = Resilience(dead, prefix="", probe_interval=0.05, max_staleness=5, revocation_ttl=1)
    assert (await resilience.probe()).startswith("error: ")
    assert resilience.degraded
    assert not resilience.fresh() or resilience.last_sync == 0.0
    await dead.aclose()
