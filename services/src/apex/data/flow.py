"""The data flow in the service: the outbox relay (a background task of the app), the
summary cache over several Redis nodes, and the routes that drive them.

:func:`install_flow` adds them to an app built by :func:`apex.data.app.create_app`: it
wraps the app's lifespan (which opens the :class:`~apex.data.service.DataService`) with
:func:`open_flow`, which builds on that service's primary pool, ClickHouse client and
metrics, and includes :data:`flow_router`. Admin routes take the admin token
(:func:`apex.data.routes.require_admin`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Final

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from apex.common.http import ApiError
from apex.common.tasks import stop_tasks
from apex.data import clickhouse_sql, references, views, warming
from apex.data.cache import Cache, CacheResult
from apex.data.callers import BILLING_READ, Caller
from apex.data.clickhouse import ClickHouse, ClickHouseError
from apex.data.outbox import Relay
from apex.data.pool import DatabasePool, PoolExhausted
from apex.data.routes import Admin, CallerDep, Service, _window
from apex.data.service import DataService

__all__ = ["Flow", "flow_router", "install_flow", "open_flow"]

log = logging.getLogger("apex.data.flow")

RELAY_CONNECTIONS: Final = 2
# Seconds the app's shutdown waits for the relay task, and for its pool to close.
RELAY_STOP_TIMEOUT: Final = 3.0
_DATABASE_DOWN: Final = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


@dataclasses.dataclass
class Flow:
    """What the data flow adds to the running service."""

    service: DataService
    cache: Cache
    relay: Relay | None

    async def invalidate(self, *tenants: object) -> None:
        """Bump the cache generation of ``tenants`` now, after a commit that changed them.

        Best effort: a node that misses it is caught up by the relay, which invalidates
        every tenant an outbox row names once it has copied the row."""
        for tenant in tenants:
            await self.cache.invalidate(str(tenant))

    def require_clickhouse(self) -> tuple[ClickHouse, Relay]:
        """The ClickHouse client and relay, or 503 when APEX_CLICKHOUSE_URL is unset."""
        if self.service.clickhouse is None or self.relay is None:
            raise ApiError(503, "clickhouse_unconfigured", "APEX_CLICKHOUSE_URL is not set")
        return self.service.clickhouse, self.relay


@contextlib.asynccontextmanager
async def open_flow(service: DataService) -> AsyncIterator[Flow]:
    """The flow on ``service``'s stores; the relay runs in the background (unless
    APEX_OUTBOX_RELAY=off) until the block ends."""
    settings, metrics = service.settings, service.metrics

    def count(result: CacheResult) -> None:
        metrics.cache_requests.labels(result).inc()

    cache = Cache(
        settings.cache_redis_urls,
        prefix=settings.redis_prefix,
        ttl=settings.cache_ttl,
        lock_ttl=settings.cache_lock_ttl,
        on_result=count,
    )
    # The relay's own two connections: a background pass never takes one of the
    # requests' (APEX_DB_POOL_SIZE is what requests get, and what /admin/pools shows).
    relay_pool = DatabasePool(
        "relay",
        settings.database_url,
        size=RELAY_CONNECTIONS,
        timeout=settings.pool_timeout,
        statement_timeout=settings.statement_timeout,
        # Also how long closing it waits for a lent connection: short, the app's shutdown
        # is bounded (a relay that cannot connect in time tries again at its next poll).
        connect_timeout=min(RELAY_STOP_TIMEOUT, settings.connect_deadline),
        metrics=metrics,
    )
    await relay_pool.open()
    relay = None
    if service.clickhouse is not None:
        relay = Relay(
            relay_pool.connection,
            service.clickhouse,
            batch=settings.outbox_batch,
            poll=settings.outbox_poll,
            listen_dsn=settings.database_url,
            cache=cache,
            on_relayed=metrics.relay_rows.inc,
            on_pending=metrics.outbox_pending.set,
        )
    tasks = []
    if relay is not None and settings.outbox_relay:
        tasks.append(asyncio.create_task(relay.run_forever(), name="apex.data outbox relay"))
    if settings.cache_warm_interval:
        warm = warming.warm_forever(
            service,
            cache,
            _balance_of,
            interval=settings.cache_warm_interval,
            top=settings.cache_warm_top,
        )
        tasks.append(asyncio.create_task(warm, name="apex.data cache warming"))
    try:
        yield Flow(service, cache, relay)
    finally:
        await _stop(tasks)
        await cache.close()
        await relay_pool.close()


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel `tasks` until they have ended, at most RELAY_STOP_TIMEOUT (a cancellation
    can be lost: `apex.common.tasks`); log what ended with an error or did not stop."""
    pending = await stop_tasks(tasks, RELAY_STOP_TIMEOUT)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("%s ended with an error", task.get_name(), exc_info=task.exception())
    for task in pending:
        log.warning("%s did not stop within %.1f s", task.get_name(), RELAY_STOP_TIMEOUT)


def install_flow(app: FastAPI) -> None:
    """Open the flow inside the app's own lifespan (after its service), add its routes."""
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        async with inner(application) as state:
            service = application.state.service
            async with open_flow(service) as flow:
                application.state.flow = flow
                try:
                    yield state
                finally:
                    application.state.flow = None

    app.router.lifespan_context = lifespan
    app.state.flow = None
    app.include_router(flow_router)


def flow_of(request: Request) -> Flow:
    """The running flow (503 while the service starts or stops)."""
    flow = request.app.state.flow
    if not isinstance(flow, Flow):
        raise ApiError(503, "unavailable", "the data service is starting or stopping")
    return flow


FlowDep = Annotated[Flow, Depends(flow_of)]

flow_router = APIRouter()


class RefreshIn(BaseModel):
    """Which materialized view to refresh."""

    model_config = ConfigDict(extra="forbid")
    view: str = "usage_daily"


@flow_router.post("/admin/relay/run", dependencies=[Admin])
async def run_relay(flow: FlowDep) -> JSONResponse:
    """One relay pass: 200 with its counts, 503 ``relay_failed`` when a store failed
    (nothing of the failed batch is acked; the counts say what went before)."""
    _, relay = flow.require_clickhouse()
    try:
        result = await relay.run_once()
    except (*_DATABASE_DOWN, PoolExhausted) as exc:
        raise ApiError(503, "database_unavailable", f"PostgreSQL: {type(exc).__name__}") from exc
    if result.error is not None:
        counts = {key: value for key, value in result.as_dict().items() if key != "error"}
        return JSONResponse(
            {"error": "relay_failed", "detail": result.error, **counts}, status_code=503
        )
    return JSONResponse(result.as_dict())


@flow_router.post("/admin/views/refresh", dependencies=[Admin])
async def refresh_view(flow: FlowDep, body: RefreshIn | None = None) -> JSONResponse:
    """REFRESH MATERIALIZED VIEW CONCURRENTLY, then validation against the base query."""
    view = (body or RefreshIn()).view
    if view not in views.VIEWS:
        raise ApiError(422, "unknown_view", f"known views: {', '.join(sorted(views.VIEWS))}")
    async with flow.service.router.primary.connection() as conn:
        result = await views.refresh(conn, view)
    return JSONResponse(result.as_dict())


@flow_router.get("/admin/references/check", dependencies=[Admin])
async def check_references(flow: FlowDep) -> JSONResponse:
    """Orphan events in ClickHouse and records missing from it (001#63)."""
    clickhouse, _ = flow.require_clickhouse()
    try:
        report = await references.check(flow.service.router.primary.connection, clickhouse)
    except ClickHouseError as exc:
        raise ApiError(503, "clickhouse_unavailable", str(exc)) from exc
    return JSONResponse(report.as_dict())


@flow_router.post("/admin/references/repair", dependencies=[Admin])
async def repair_references(flow: FlowDep) -> JSONResponse:
    """Delete orphan events, re-enqueue missing records (the relay copies them)."""
    clickhouse, _ = flow.require_clickhouse()
    try:
        result = await references.repair(flow.service.router.primary.connection, clickhouse)
    except ClickHouseError as exc:
        raise ApiError(503, "clickhouse_unavailable", str(exc)) from exc
    return JSONResponse(result.as_dict())


# The whole range of ClickHouse's DateTime, for an open-ended window.
_DATETIME_MIN: Final = 0
_DATETIME_MAX: Final = 4_294_967_295


def _epoch(value: datetime.datetime | None, default: int) -> int:
    """Seconds since the epoch of ``value`` (within DateTime's range), else ``default``."""
    if value is None:
        return default
    return min(max(int(value.timestamp()), _DATETIME_MIN), _DATETIME_MAX)


@flow_router.get("/v1/usage/analytics")
async def usage_analytics(
    caller: CallerDep,
    flow: FlowDep,
    since: Annotated[datetime.datetime | None, Query()] = None,
    until: Annotated[datetime.datetime | None, Query()] = None,
) -> dict[str, Any]:
    """Totals per kind from ClickHouse (what the relay copied, each record once), and
    ``relay_lag``: outbox rows not relayed yet (every tenant's: the relay is shared)."""
    caller.require(BILLING_READ)
    rows, lag = await _analytics(flow, caller, clickhouse_sql.ANALYTICS, since, until)
    return {
        "tenant_id": str(caller.tenant_id),
        "by_kind": {
            str(kind): {"quantity": int(quantity), "cost_micros": int(cost)}
            for kind, quantity, cost in rows
        },
        "relay_lag": lag,
        "source": "clickhouse",
    }


@flow_router.get("/v1/usage/analytics/agents")
async def usage_by_agent_model(
    caller: CallerDep,
    flow: FlowDep,
    since: Annotated[datetime.datetime | None, Query()] = None,
    until: Annotated[datetime.datetime | None, Query()] = None,
) -> dict[str, Any]:
    """Cost per agent and model from ClickHouse (the records' labels, each record once:
    apex.agents' LLM calls), and ``relay_lag`` as for the analytics."""
    caller.require(BILLING_READ)
    sql = clickhouse_sql.COSTS_BY_AGENT_MODEL
    rows, lag = await _analytics(flow, caller, sql, since, until)
    return {
        "tenant_id": str(caller.tenant_id),
        "by_agent_model": [
            {"agent": agent, "model": model, "quantity": int(quantity), "cost_micros": int(cost)}
            for agent, model, quantity, cost in rows
        ],
        "relay_lag": lag,
        "source": "clickhouse",
    }


async def _analytics(
    flow: Flow,
    caller: Caller,
    sql: str,
    since: datetime.datetime | None,
    until: datetime.datetime | None,
) -> tuple[list[tuple[Any, ...]], int]:
    """The rows of the tenant's ClickHouse query ``sql`` in the window, and the relay lag."""
    _window(since, until)
    clickhouse, relay = flow.require_clickhouse()
    params = {
        "tenant": str(caller.tenant_id),
        "since": _epoch(since, _DATETIME_MIN),
        "until": _epoch(until, _DATETIME_MAX),
    }
    try:
        rows = await clickhouse.execute(sql, params)
    except ClickHouseError as exc:
        if "usage_events" in str(exc) and "doesn't exist" in str(exc):
            rows = []  # nothing relayed yet: the relay makes the table on its first pass
        else:
            raise ApiError(503, "clickhouse_unavailable", "ClickHouse is unreachable") from exc
    try:
        lag = await relay.pending()
    except (*_DATABASE_DOWN, PoolExhausted) as exc:
        raise ApiError(503, "database_unavailable", f"PostgreSQL: {type(exc).__name__}") from exc
    return rows, lag


def _balance_of(service: DataService, tenant: uuid.UUID) -> Callable[[], Awaitable[dict[str, Any]]]:
    """The computation of ``tenant``'s cached balance, from the primary."""

    async def work() -> dict[str, Any]:
        async with service.router.primary.connection() as conn:
            balance = await conn.fetchval(
                "SELECT balance_micros FROM tenant_credits WHERE tenant_id = $1", tenant
            )
        return {"balance_micros": int(balance or 0)}

    async def compute() -> dict[str, Any]:
        return await service.run(work)

    return compute


class WarmIn(BaseModel):
    """The tenants whose cached balances to compute now: these (`tenant_ids`), or the `top`
    busiest by priority (`apex.data.warming`); exactly one of the two."""

    model_config = ConfigDict(extra="forbid")
    tenant_ids: Annotated[list[uuid.UUID] | None, Field(min_length=1, max_length=1000)] = None
    top: Annotated[int | None, Field(ge=1, le=1000)] = None


@flow_router.post("/admin/cache/warm", dependencies=[Admin])
async def warm_cache(body: WarmIn, service: Service, flow: FlowDep) -> dict[str, Any]:
    """Compute and store tenants' balances in the cache (001#67), in priority order for
    `top`; ``warmed`` counts the ones whose cache node took them, ``order`` (with `top`)
    names them as warmed."""
    if body.tenant_ids is not None and body.top is None:
        warmed = await warming.warm_balances(service, flow.cache, body.tenant_ids, _balance_of)
        return {"warmed": warmed, "tenants": len(body.tenant_ids)}
    if body.top is not None and body.tenant_ids is None:
        order = await warming.busiest_tenants(service, body.top)
        warmed = await warming.warm_balances(service, flow.cache, order, _balance_of)
        return {"warmed": warmed, "tenants": len(order), "order": [str(t) for t in order]}
    raise ApiError(422, "invalid_request", "give exactly one of tenant_ids and top")


@flow_router.get("/admin/cache/memory", dependencies=[Admin])
async def cache_memory(service: Service, flow: FlowDep) -> dict[str, Any]:
    """Each cache node's memory (001#70): bytes used, its limit, evicted keys, the pressure
    (used / limit), and ``alert`` when a node is at or past APEX_CACHE_MEMORY_ALERT of its
    limit or does not answer. The metrics follow the same reading."""
    threshold = service.settings.cache_memory_alert
    nodes: list[dict[str, Any]] = []
    for index, node in enumerate(await flow.cache.memory()):
        if node is None:
            nodes.append({"node": index, "state": "down", "alert": True})
            continue
        label = str(node.node)
        service.metrics.cache_memory.labels(label, "used").set(node.used_bytes)
        service.metrics.cache_memory.labels(label, "limit").set(node.limit_bytes)
        service.metrics.cache_evicted.labels(label).set(node.evicted_keys)
        nodes.append(
            {
                "node": index,
                "state": "up",
                "used_bytes": node.used_bytes,
                "limit_bytes": node.limit_bytes,
                "evicted_keys": node.evicted_keys,
                "pressure": round(node.pressure, 4),
                "alert": node.limit_bytes > 0 and node.pressure >= threshold,
            }
        )
    return {"threshold": threshold, "alert": any(n["alert"] for n in nodes), "nodes": nodes}


@flow_router.get("/v1/credits")
async def credit_balance(caller: CallerDep, service: Service, flow: FlowDep) -> dict[str, Any]:
    """The caller's tenant's credit balance, through the cache (``source``: cache, or
    primary when the cache missed or its node is down)."""
    caller.require(BILLING_READ)
    tenant = caller.tenant_id
    compute = _balance_of(service, tenant)
    value, result = await flow.cache.get_or_compute(str(tenant), compute, part="credits")
    source = "cache" if result == "hit" else "primary"
    return {"tenant_id": str(tenant), **value, "source": source}
