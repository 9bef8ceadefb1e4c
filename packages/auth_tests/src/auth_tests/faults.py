"""apex.auth with a fault proxy between it and Redis (L3): outages, latency, resets.

Public: `redis_fault(platform, instance=N, **settings)` starts auth instance N of this
worker with its Redis connections through a `FaultProxy` of its own and yields the
instance's client and the proxy (`proxy.down()`, `proxy.latency(...)`, ...).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest

from apex_testkit import FaultProxy, Level, Platform, eventually, tls_context

__all__ = ["RedisFault", "redis_fault"]


@dataclass
class RedisFault:
    """An auth process (L3) whose every Redis connection goes through `proxy`."""

    client: httpx.AsyncClient
    proxy: FaultProxy


@asynccontextmanager
async def redis_fault(
    platform: Platform, *, instance: int, **settings: str
) -> AsyncIterator[RedisFault]:
    """Auth instance `instance` with a fault proxy to Redis (L3 only); the proxy is
    cleared and the instance healthy when this starts, and cleared again when it ends."""
    if platform.level is not Level.L3:
        pytest.fail("Redis faults need auth as a process: mark the test L3 only", pytrace=False)
    process = platform.instance("auth", instance, via_proxy=("redis",), **settings)
    proxy = platform.proxy("auth", instance, "redis")
    proxy.clear()
    async with httpx.AsyncClient(base_url=process.url, timeout=30, verify=tls_context()) as client:

        async def healthy() -> bool:
            return (await client.get("/healthz")).status_code == 200

        await eventually(healthy, timeout=15, message="the proxied auth instance to be healthy")
        try:
            yield RedisFault(client, proxy)
        except BaseException:
            log = process.log.read_text(errors="replace") if process.log.exists() else ""
            print(f"--- tail of {process.log}:\n{log[-4000:]}")
            raise
        finally:
            proxy.clear()
