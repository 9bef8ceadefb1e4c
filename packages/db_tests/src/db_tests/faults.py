"""apex.data with a fault proxy between it and one of its servers (L3): outages, resets.

Public: `proxied_data(platform, instance=N, via="postgres", **settings)` starts data
instance N of this worker with its connections to `via` ("postgres", "redis",
"clickhouse") through a `FaultProxy` of its own, and yields the instance's client and
the proxy (`proxy.down()`, `proxy.reset_peers()`, `proxy.stats`, ...).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest

from apex_testkit import FaultProxy, Level, Platform, eventually, tls_context

__all__ = ["ProxiedData", "proxied_data"]


@dataclass
class ProxiedData:
    """A data process (L3) whose every connection to one server goes through `proxy`."""

    client: httpx.AsyncClient
    proxy: FaultProxy


@asynccontextmanager
async def proxied_data(
    platform: Platform, *, instance: int, via: str = "postgres", **settings: str
) -> AsyncIterator[ProxiedData]:
    """Data instance `instance` with a fault proxy to `via` (L3 only); the proxy is clear
    and the instance healthy when this starts, and the proxy cleared again at the end."""
    if platform.level is not Level.L3:
        pytest.fail("faults need apex.data as a process: mark the test L3 only", pytrace=False)
    process = platform.instance("data", instance, via_proxy=(via,), **settings)
    proxy = platform.proxy("data", instance, via)
    proxy.clear()
    async with httpx.AsyncClient(base_url=process.url, timeout=30, verify=tls_context()) as client:

        async def healthy() -> bool:
            return (await client.get("/healthz")).status_code == 200

        await eventually(healthy, timeout=15, message="the proxied data instance to be healthy")
        try:
            yield ProxiedData(client, proxy)
        except BaseException:
            log = process.log.read_text(errors="replace") if process.log.exists() else ""
            print(f"--- tail of {process.log}:\n{log[-4000:]}")
            raise
        finally:
            proxy.clear()
