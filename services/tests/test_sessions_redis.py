"""Device-limit eviction (SessionStore.evict_beyond) against a real Redis: one atomic step,
so logins that race end exactly the sessions beyond the limit."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from apex.auth.sessions import Session, SessionStore


@pytest.fixture(name="store")
async def _store(redis_namespace: Any) -> AsyncIterator[SessionStore]:
    redis = Redis.from_url(redis_namespace.url, decode_responses=True)
    prefix = f"{redis_namespace.prefix}test-{uuid.uuid4().hex[:8]}:"
    try:
        yield SessionStore(redis, prefix=prefix, ttl=600)
    finally:
        keys = [key async for key in redis.scan_iter(match=f"{prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


async def _login(store: SessionStore, user: str, method: str = "password") -> Session:
    key = "k" * 12 if method == "api_key" else None
    session, _ = await store.create(
        user_id=user, api_key_id=key, tenant_id=None, scopes=[], access_ttl=60, method=method
    )
    return session


async def test_six_logins_racing_leave_exactly_the_limit(store: SessionStore) -> None:
    """Every login's session exists before any login enforces the limit: each enforcement
    sees all six, and together they still end exactly three."""
    user = uuid.uuid4().hex
    sessions = [await _login(store, user) for _ in range(6)]

    ended = await asyncio.gather(*(store.evict_beyond(user, 3, keep=s.id) for s in sessions))

    alive = [s.id for s in await store.list_for_user(user)]
    assert len(alive) == 3, alive
    ended_ids = [s.id for batch in ended for s in batch]
    assert sorted(ended_ids) == sorted({s.id for s in sessions} - set(alive)), "each ended once"
    assert all(s.method == "password" and s.user_id == user for b in ended for s in b)


async def test_the_oldest_go_first_and_the_kept_one_never(store: SessionStore) -> None:
    user = uuid.uuid4().hex
    first, second, third = [await _login(store, user) for _ in range(3)]

    ended = await store.evict_beyond(user, 2, keep=first.id)

    assert [s.id for s in ended] == [second.id]
    assert [s.id for s in await store.list_for_user(user)] == [first.id, third.id]


async def test_api_key_sessions_neither_count_nor_end(store: SessionStore) -> None:
    user = uuid.uuid4().hex
    machines = [await _login(store, user, "api_key") for _ in range(3)]
    person = await _login(store, user)

    assert await store.evict_beyond(user, 1, keep=person.id) == []
    assert len(await store.list_for_user(user)) == len(machines) + 1
