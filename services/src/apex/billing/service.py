"""The running billing service: what its lifespan opens, for the routes.

:func:`open_service` opens the PostgreSQL pool (acting as ``apex_app``), Redis, the
payment provider's client and the context-token verifier (audience ``apex-billing``),
starts the schedule (``apex.billing.schedule``), and stops and closes them after its
block.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable
from typing import Final

from redis.asyncio import Redis

from apex.billing.metering import Metering
from apex.billing.metrics import Metrics
from apex.billing.payments import PaymentProvider
from apex.billing.refunds import Refunds
from apex.billing.schedule import Schedule
from apex.billing.settings import BillingSettings
from apex.billing.store import BillingStore
from apex.billing.subscriptions import Subscriptions
from apex.billing.webhooks import WebhookProcessor
from apex.data.callers import Verifier
from apex.data.clickhouse import ClickHouse
from apex.data.pool import create_pool

__all__ = ["AUDIENCE", "BillingService", "open_service"]

AUDIENCE: Final = "apex-billing"
HEALTH_TIMEOUT: Final = 2.0


@dataclasses.dataclass
class BillingService:
    """The billing service's stores, provider and processors."""

    settings: BillingSettings
    metrics: Metrics
    store: BillingStore
    redis: Redis
    verifier: Verifier
    subscriptions: Subscriptions
    webhooks: WebhookProcessor
    metering: Metering
    refunds: Refunds
    schedule: Schedule

    async def health(self) -> dict[str, str]:
        """Each dependency's check: ok, or why not."""
        postgres, redis = await asyncio.gather(_probe(self.store.ping()), _probe(self.redis.ping()))
        return {"postgres": postgres, "redis": redis}


async def _probe(check: Awaitable[object]) -> str:
    try:
        await asyncio.wait_for(check, HEALTH_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - any failure is a failed check, reported by type
        return f"down: {type(exc).__name__}"
    return "ok"


@contextlib.asynccontextmanager
async def open_service(settings: BillingSettings) -> AsyncIterator[BillingService]:
    """Open everything ``settings`` names; close it all after the block."""
    async with contextlib.AsyncExitStack() as stack:
        pool = await create_pool(settings.database_url, min_size=1, max_size=10)
        stack.push_async_callback(pool.close)
        redis = Redis.from_url(settings.redis_url, decode_responses=True, socket_connect_timeout=2)
        stack.push_async_callback(redis.aclose)
        provider = PaymentProvider(
            settings.payments_base_url,
            settings.payments_api_key,
            timeout=settings.payments_timeout,
            retry_delay=settings.payments_retry_delay,
        )
        stack.push_async_callback(provider.aclose)
        verifier = Verifier(settings.auth_url, settings.jwt_issuer, AUDIENCE)
        stack.push_async_callback(verifier.aclose)
        store = BillingStore(pool)
        clickhouse = None
        if settings.clickhouse_url is not None:
            clickhouse = ClickHouse.from_url(settings.clickhouse_url)
            stack.push_async_callback(clickhouse.close)
        subscriptions = Subscriptions(settings, store=store, provider=provider, redis=redis)
        refunds = Refunds(store, provider)
        metering = Metering(pool, clickhouse)
        schedule = Schedule(settings, pool, metering, provider)
        # Stopped first on the way out, before what its pass uses is closed.
        schedule.start()
        stack.push_async_callback(schedule.stop)
        yield BillingService(
            settings,
            Metrics(),
            store,
            redis,
            verifier,
            subscriptions,
            WebhookProcessor(subscriptions, refunds),
            metering,
            refunds,
            schedule,
        )
