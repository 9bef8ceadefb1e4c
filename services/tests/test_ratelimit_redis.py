"""The sliding-window Lua script against a real Redis: exact under a concurrent burst."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from apex.common.config import RateLimit
from apex.common.ratelimit import SlidingWindowLimiter
from apex_testkit import eventually


@pytest.fixture(name="limiter")
async def _limiter(redis_namespace: Any) -> AsyncIterator[SlidingWindowLimiter]:
    redis = Redis.from_url(redis_namespace.url, decode_responses=True)
    prefix = f"{redis_namespace.prefix}test-{uuid.uuid4().hex[:8]}:"
    try:
        yield SlidingWindowLimiter(redis, prefix=prefix)
    finally:
        keys = [key async for key in redis.scan_iter(match=f"{prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


async def test_a_concurrent_burst_gets_exactly_the_limit(limiter: SlidingWindowLimiter) -> None:
    decisions = await asyncio.gather(*(limiter.hit("burst", RateLimit(10, 60)) for _ in range(30)))
    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == 10
    assert sorted(d.remaining for d in allowed) == list(range(10))
    assert all(1 <= d.retry_after <= 60 for d in decisions if not d.allowed)


async def test_subjects_are_limited_independently(limiter: SlidingWindowLimiter) -> None:
    assert (await limiter.hit("a", RateLimit(1, 60))).allowed
    assert not (await limiter.hit("a", RateLimit(1, 60))).allowed
    assert (await limiter.hit("b", RateLimit(1, 60))).allowed


async def test_the_window_slides(limiter: SlidingWindowLimiter) -> None:
    limit = RateLimit(2, 1)
    assert (await limiter.hit("slide", limit)).allowed
    assert (await limiter.hit("slide", limit)).allowed
    refused = await limiter.hit("slide", limit)
    assert not refused.allowed
    assert refused.retry_after == 1

    # Refused hits are not counted, so asking again until the window has slid is harmless.
    async def allowed_again() -> bool:
        return (await limiter.hit("slide", limit)).allowed

    await eventually(allowed_again, timeout=5, message="the 1 s window to slide")
