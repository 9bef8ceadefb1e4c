"""The running agents service: what its lifespan opens, for the routes and the workers.

:func:`open_service` opens the PostgreSQL pool (acting as ``apex_app``, migration 0010),
Redis, the LLM provider, the context-token verifier (audience ``apex-agents``) and the
worker pool, and closes them after its block.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable
from typing import Final

from redis.asyncio import Redis

from apex.agents.calls import AgentCaller
from apex.agents.failover import Failover
from apex.agents.jobs import JobQueue
from apex.agents.llm import Provider
from apex.agents.metrics import Metrics
from apex.agents.runs import RunStore
from apex.agents.settings import AgentSettings
from apex.agents.worker import WorkerPool
from apex.data.callers import Verifier
from apex.data.pool import create_pool

__all__ = ["AUDIENCE", "AgentService", "open_service"]

# The audience context tokens for this service name.
AUDIENCE: Final = "apex-agents"
HEALTH_TIMEOUT: Final = 2.0


@dataclasses.dataclass
class AgentService:
    """The agents service's stores, queue, provider and workers."""

    settings: AgentSettings
    metrics: Metrics
    store: RunStore
    queue: JobQueue
    redis: Redis
    providers: Failover
    verifier: Verifier
    workers: WorkerPool

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
async def open_service(settings: AgentSettings, *, workers: int) -> AsyncIterator[AgentService]:
    """Open everything ``settings`` names and start ``workers`` consumer tasks; stop and
    close it all after the block."""
    metrics = Metrics()
    async with contextlib.AsyncExitStack() as stack:
        pool = await create_pool(settings.database_url, min_size=1, max_size=10)
        stack.push_async_callback(pool.close)
        redis = Redis.from_url(settings.redis_url, decode_responses=True, socket_connect_timeout=2)
        stack.push_async_callback(redis.aclose)
        providers = _providers(settings, metrics)
        stack.push_async_callback(providers.aclose)
        verifier = Verifier(settings.auth_url, settings.jwt_issuer, AUDIENCE)
        stack.push_async_callback(verifier.aclose)
        store = RunStore(pool)
        queue = JobQueue(redis, settings.redis_prefix)
        caller = AgentCaller(settings, providers=providers, metrics=metrics)
        pool_of_workers = WorkerPool(
            settings, store=store, queue=queue, caller=caller, redis=redis, metrics=metrics
        )
        await pool_of_workers.start(workers)
        stack.push_async_callback(pool_of_workers.stop)
        yield AgentService(
            settings, metrics, store, queue, redis, providers, verifier, pool_of_workers
        )


def _providers(settings: AgentSettings, metrics: Metrics) -> Failover:
    """The providers in failover order: ``llm``, then ``llm_fallback`` if configured."""
    urls = [("llm", settings.llm_base_url, settings.llm_api_key)]
    if settings.llm_fallback_base_url and settings.llm_fallback_api_key:
        urls.append(("llm_fallback", settings.llm_fallback_base_url, settings.llm_fallback_api_key))
    providers = [
        Provider(name, url, key, timeout=settings.llm_timeout, retries=settings.llm_retries)
        for name, url, key in urls
    ]
    return Failover(
        providers,
        failures=settings.breaker_failures,
        reset=settings.breaker_reset,
        metrics=metrics,
    )
