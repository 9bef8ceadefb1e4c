"""Cache warming by priority (001#67): the tenants' cached balances computed before anyone
asks, the busiest tenants first.

Priority: the tenants with the highest cost over the last WARM_DAYS UTC days in the
``usage_daily`` materialized view (then quantity, then tenant id: a stable order), so a
warming cut short has warmed the ones that matter most. On request (``POST
/admin/cache/warm {"top": N}``) and, when APEX_CACHE_WARM_INTERVAL is set, every that
many seconds for the APEX_CACHE_WARM_TOP busiest tenants. The view is as fresh as its last
refresh (``POST /admin/views/refresh``): a tenant new since then waits for the next one.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

from apex.data.cache import Cache
from apex.data.service import DataService

__all__ = ["WARM_DAYS", "busiest_tenants", "warm_balances", "warm_forever"]

log = logging.getLogger("apex.data.warming")

WARM_DAYS: Final = 7

Balance = Callable[[DataService, uuid.UUID], Callable[[], Awaitable[dict[str, Any]]]]


async def busiest_tenants(service: DataService, top: int) -> list[uuid.UUID]:
    """The `top` tenants by cost (then quantity) over the last WARM_DAYS days."""

    async def work() -> list[uuid.UUID]:
        async with service.router.primary.connection() as conn:
            rows = await conn.fetch(
                "SELECT tenant_id FROM usage_daily "
                "WHERE day >= (now() AT TIME ZONE 'UTC')::date - $1::int "
                "GROUP BY tenant_id "
                "ORDER BY sum(cost_micros) DESC, sum(quantity) DESC, tenant_id LIMIT $2",
                WARM_DAYS,
                top,
            )
        return [row["tenant_id"] for row in rows]

    return await service.run(work)


async def warm_balances(
    service: DataService, cache: Cache, tenants: Sequence[uuid.UUID], balance: Balance
) -> int:
    """Compute and store each tenant's cached balance, in the order given; how many a cache
    node took (counted in ``apex_data_cache_warmed``)."""
    warmed = 0
    for tenant in tenants:
        if await cache.warm(str(tenant), balance(service, tenant), "credits"):
            warmed += 1
            service.metrics.cache_warmed.inc()
    return warmed


async def warm_forever(
    service: DataService, cache: Cache, balance: Balance, *, interval: float, top: int
) -> None:
    """Warm the `top` busiest tenants every `interval` seconds until cancelled; a failed
    round (the database or the cache away) is logged and the next one tries again."""
    while True:
        try:
            await warm_balances(service, cache, await busiest_tenants(service, top), balance)
        except Exception:  # a background loop outlives any one round (cancellation ends it)
            log.warning("cache warming round failed; next in %.1f s", interval, exc_info=True)
        await asyncio.sleep(interval)
