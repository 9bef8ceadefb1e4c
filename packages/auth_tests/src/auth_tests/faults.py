"""apex.auth with a fault proxy between it and Redis (L3): outages, latency, resets.

Public: `redis_fault(platform, instance=N, **settings)` starts auth instance N of this
worker with its Redis connections through a `FaultProxy` of its own and yields a
`RedisFault` (the kit's `ProxiedService`): the instance's client and the proxy
(`proxy.down()`, `proxy.latency(...)`, ...).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from apex_testkit import Level, Platform, ProxiedService

__all__ = ["RedisFault", "redis_fault"]

RedisFault = ProxiedService
"""An auth process (L3) whose every Redis connection goes through `proxy`."""


@asynccontextmanager
async def redis_fault(
    platform: Platform, *, instance: int, **settings: str
) -> AsyncIterator[RedisFault]:
    """Auth instance `instance` with a fault proxy to Redis (L3 only); the proxy is
    cleared and the instance healthy when this starts, and cleared again when it ends."""
    if platform.level is not Level.L3:
        pytest.fail("Redis faults need auth as a process: mark the test L3 only", pytrace=False)
    async with platform.proxied("auth", instance, "redis", **settings) as fault:
        yield fault
