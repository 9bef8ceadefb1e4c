"""apex.data with a fault proxy between it and one of its servers: outages, resets.

Public: `proxied_data(platform, instance=N, via="postgres", **settings)` yields a
`ProxiedData`: the client of a data instance whose connections to `via` ("postgres",
"redis", "clickhouse") all go through a `FaultProxy` of its own, and that proxy
(`proxy.down()`, `proxy.reset_peers()`, `proxy.stats`, ...). At L3 the instance is the
worker's process N started with the kit's proxy (`platform.proxied(...)`); at
L2 (PostgreSQL only, give `upstream=` its DSN) the test's own proxy in front of the
worker's database and an in-process app pointed at it.

At L3 the kit keys a proxy by service, instance and dependency, not by settings: an
instance number must always come with the same settings in this package (the tests use
1: outage with a 30 s deadline, 2: a 0.3 s deadline, 3: fast backoff, 4: Redis,
5: ClickHouse, 6: a pool of 3; 21-25: a database of the test's own, through ClickHouse
(21), Redis (22, 24, 25) or PostgreSQL (23)).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from apex_testkit import FaultProxy, Level, Platform

__all__ = ["ProxiedData", "proxied_data"]


@dataclass
class ProxiedData:
    """A data instance whose every connection to one server goes through `proxy`."""

    client: httpx.AsyncClient
    proxy: FaultProxy


@contextlib.asynccontextmanager
async def proxied_data(
    platform: Platform,
    *,
    instance: int,
    via: str = "postgres",
    upstream: str | None = None,
    **settings: str,
) -> AsyncIterator[ProxiedData]:
    """Data instance `instance` with a fault proxy to `via`; the proxy is clear and the
    instance healthy when this starts, and the proxy cleared again at the end."""
    if platform.level is Level.L2:
        if via != "postgres" or upstream is None:
            pytest.fail("at L2 only PostgreSQL is proxied: give upstream=<its DSN>")
        with FaultProxy(upstream, name=f"data-{instance}-postgres") as proxy:
            url = proxy.url_for(upstream)
            async with platform.client("data", instance=0, APEX_DATABASE_URL=url, **settings) as c:
                yield ProxiedData(c, proxy)
        return
    if platform.level is not Level.L3:
        pytest.fail("faults need the platform's own servers: mark the test L2/L3", pytrace=False)
    async with platform.proxied("data", instance, via, **settings) as proxied:
        yield ProxiedData(proxied.client, proxied.proxy)
