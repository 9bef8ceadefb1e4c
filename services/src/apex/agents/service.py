"""The running agents service: what its lifespan opens, for the routes and the workers.

:func:`open_service` opens the PostgreSQL pool (acting as ``apex_app``, migration 0010),
Redis, the LLM provider, the context-token verifier (audience ``apex-agents``), the
worker pool and, when apex.data and the usage credential are set, the cost records'
delivery to apex.data (``apex.agents.cost_records``), and closes them after its block.
It also holds the tracer (``tracing``), the run states, the audit trail (relaying run
events to the users' connections: ``run_events``) and the reloadable config (``state``,
``audit``, ``config``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Final

import asyncpg
from redis.asyncio import Redis

from apex.agents.audit import AuditLog, Relay
from apex.agents.cache import ResponseCache
from apex.agents.calls import AgentCaller
from apex.agents.config import ConfigHolder
from apex.agents.cost_records import CostDelivery, CostLedger
from apex.agents.definitions import DefinitionStore
from apex.agents.dependencies import DependencyErrors
from apex.agents.failover import Failover
from apex.agents.gcpauses import watch_gc
from apex.agents.jobs import JobQueue
from apex.agents.llm import Provider
from apex.agents.metrics import Metrics
from apex.agents.run_events import RunEvents
from apex.agents.runs import RunStore
from apex.agents.settings import AgentSettings
from apex.agents.state import StateStore
from apex.agents.tracing import Tracing
from apex.agents.worker import WorkerPool
from apex.common.user_logs import UserLogs
from apex.data.callers import Verifier
from apex.data.pool import create_pool

__all__ = ["AUDIENCE", "AgentService", "open_service"]

log = logging.getLogger(__name__)

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
    definitions: DefinitionStore
    states: StateStore
    audit: AuditLog
    config: ConfigHolder
    dependencies: DependencyErrors | None = None
    costs: CostDelivery | None = None
    tracing: Tracing = dataclasses.field(default_factory=lambda: Tracing(None))

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
    tracing = Tracing(settings.otel_endpoint, settings.otel_export_delay)
    async with contextlib.AsyncExitStack() as stack:
        # Shut down on the way out whatever happens (a second shutdown is a no-op).
        stack.push_async_callback(asyncio.to_thread, tracing.shutdown)
        stack.enter_context(watch_gc(metrics.gc_pause))
        pool = await create_pool(settings.database_url, min_size=1, max_size=10)
        stack.push_async_callback(pool.close)
        redis = Redis.from_url(settings.redis_url, decode_responses=True, socket_connect_timeout=2)
        stack.push_async_callback(redis.aclose)
        providers = _providers(settings, metrics)
        stack.push_async_callback(providers.aclose)
        verifier = Verifier(settings.auth_url, settings.jwt_issuer, AUDIENCE)
        stack.push_async_callback(verifier.aclose)
        store = RunStore(pool)
        queue = JobQueue(redis, settings.redis_prefix, aging=settings.job_aging)
        definitions = DefinitionStore(pool)
        states, audit = StateStore(pool), AuditLog(pool, _run_events(settings, pool, redis))
        config = ConfigHolder(settings.agents_config, settings.models)
        dependencies = DependencyErrors(metrics.registry, settings.error_log_interval)
        ledger, delivery = await _cost_delivery(settings, redis, metrics, dependencies, stack)
        caller = AgentCaller(
            settings,
            providers=providers,
            metrics=metrics,
            definitions=definitions,
            audit=audit,
            cache=ResponseCache(redis, settings.redis_prefix, ttl=settings.llm_cache_ttl),
            costs=ledger,
            tracing=tracing,
        )
        pool_of_workers = WorkerPool(
            settings,
            store=store,
            queue=queue,
            caller=caller,
            redis=redis,
            metrics=metrics,
            states=states,
            audit=audit,
            config=config,
            tracing=tracing,
        )
        # Flushed as soon as the workers have stopped (the spans of the work they stop
        # included), before anything slower is closed.
        stack.push_async_callback(asyncio.to_thread, tracing.shutdown)
        await pool_of_workers.start(workers)
        stack.push_async_callback(pool_of_workers.stop)
        yield AgentService(
            settings,
            metrics,
            store,
            queue,
            redis,
            providers,
            verifier,
            pool_of_workers,
            definitions=definitions,
            states=states,
            audit=audit,
            config=config,
            dependencies=dependencies,
            costs=delivery,
            tracing=tracing,
        )


async def _cost_delivery(
    settings: AgentSettings,
    redis: Redis,
    metrics: Metrics,
    dependencies: DependencyErrors,
    stack: contextlib.AsyncExitStack,
) -> tuple[CostLedger | None, CostDelivery | None]:
    """The cost records' ledger and their delivery task (stopped with ``stack``), when
    apex.data and the usage credential are set; else none (costs stay on the runs)."""
    if settings.data_url is None or settings.usage_token is None:
        log.warning("costs are not sent to apex.data: APEX_DATA_URL or APEX_USAGE_TOKEN unset")
        return None, None
    ledger = CostLedger(redis, settings.redis_prefix, metrics.registry)
    delivery = CostDelivery(
        ledger,
        dependencies,
        data_url=settings.data_url,
        token=settings.usage_token,
        batch=settings.cost_batch,
        interval=settings.cost_interval,
        timeout=settings.cost_timeout,
    )
    delivery.start()
    stack.push_async_callback(delivery.stop)
    return ledger, delivery


def _run_events(settings: AgentSettings, pool: asyncpg.Pool, redis: Redis) -> Relay | None:
    """The relay of run events to the users' connections (None: APEX_RUN_EVENTS=off)."""
    if not settings.run_events:
        return None
    logs = UserLogs(
        redis,
        prefix=settings.redis_prefix,
        buffer=settings.ws_replay_buffer,
        ttl=settings.ws_stream_ttl,
    )
    return RunEvents(pool, redis, logs, prefix=settings.redis_prefix).relay


def _providers(settings: AgentSettings, metrics: Metrics) -> Failover:
    """The providers in failover order: ``llm``, then ``llm_fallback`` if configured."""
    urls = [("llm", settings.llm_base_url, settings.llm_api_key)]
    if settings.llm_fallback_base_url and settings.llm_fallback_api_key:
        urls.append(("llm_fallback", settings.llm_fallback_base_url, settings.llm_fallback_api_key))
    providers = [
        Provider(
            name,
            url,
            key,
            timeout=settings.llm_timeout,
            retries=settings.llm_retries,
            backoff=settings.llm_backoff,
        )
        for name, url, key in urls
    ]
    return Failover(
        providers,
        failures=settings.breaker_failures,
        reset=settings.breaker_reset,
        metrics=metrics,
    )
