"""The data flow's stores in the service: the outbox relay (a background task of the app),
the ClickHouse client, the summary cache, and the admin routes that drive them.

:func:`install_flow` adds them to an app: it wraps the app's lifespan (whatever else it
opens) with :func:`open_flow`, and includes :data:`admin_router`. The admin routes need
``Authorization: Bearer <APEX_ADMIN_TOKEN>`` (403 while the setting is unset).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from apex.common.http import ApiError, bearer_token
from apex.data import references, views
from apex.data.cache import Cache
from apex.data.clickhouse import ClickHouse, ClickHouseError
from apex.data.outbox import Relay, pending_count
from apex.data.pool import create_pool
from apex.data.settings import DataSettings

__all__ = ["Flow", "admin_router", "get_flow", "install_flow", "open_flow", "require_admin"]

log = logging.getLogger("apex.data.flow")

_DATABASE_DOWN: Final = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


@dataclasses.dataclass
class Flow:
    """The stores of the data flow, opened by the app's lifespan."""

    settings: DataSettings
    pool: asyncpg.Pool
    cache: Cache
    clickhouse: ClickHouse | None
    relay: Relay | None
    relayed_total: int = 0

    def count_relayed(self, rows: int) -> None:
        """What the relay calls after each acked batch (``apex_data_relay_rows_total``)."""
        self.relayed_total += rows

    def require_clickhouse(self) -> tuple[ClickHouse, Relay]:
        """The ClickHouse client and relay, or 503 when APEX_CLICKHOUSE_URL is unset."""
        if self.clickhouse is None or self.relay is None:
            raise ApiError(503, "clickhouse_unconfigured", "APEX_CLICKHOUSE_URL is not set")
        return self.clickhouse, self.relay


@contextlib.asynccontextmanager
async def open_flow(settings: DataSettings) -> AsyncIterator[Flow]:
    """Open the flow's stores and run the relay in the background until the block ends."""
    pool = await create_pool(settings.database_url, max_size=settings.pool_size)
    cache = Cache(
        settings.cache_redis_urls,
        prefix=settings.redis_prefix,
        ttl=settings.cache_ttl,
        lock_ttl=settings.cache_lock_ttl,
    )
    clickhouse = ClickHouse.from_url(settings.clickhouse_url) if settings.clickhouse_url else None
    flow = Flow(settings, pool, cache, clickhouse, None)
    if clickhouse is not None:
        flow.relay = Relay(
            pool,
            clickhouse,
            batch=settings.outbox_batch,
            poll=settings.outbox_poll,
            listen_dsn=settings.database_url,
            cache=cache,
            on_relayed=flow.count_relayed,
        )
    task = None
    if flow.relay is not None and settings.outbox_relay:
        task = asyncio.create_task(flow.relay.run_forever())
    try:
        yield flow
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await cache.close()
        if clickhouse is not None:
            await clickhouse.close()
        await pool.close()


def install_flow(app: FastAPI, settings: DataSettings) -> None:
    """Open the flow's stores around the app's own lifespan, and add its routes."""
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        async with inner(application) as state, open_flow(settings) as flow:
            application.state.flow = flow
            yield state

    app.router.lifespan_context = lifespan
    app.include_router(admin_router)


def get_flow(request: Request) -> Flow:
    """Dependency: the app's flow; 503 if its lifespan has not run."""
    flow = getattr(request.app.state, "flow", None)
    if not isinstance(flow, Flow):
        raise ApiError(503, "unavailable", "service not started: its lifespan has not run")
    return flow


def require_admin(request: Request, flow: Flow = Depends(get_flow)) -> Flow:  # noqa: B008
    """Dependency: the caller presents APEX_ADMIN_TOKEN as a bearer token."""
    expected = flow.settings.admin_token
    if not expected:
        raise ApiError(403, "forbidden", "admin API disabled: APEX_ADMIN_TOKEN is not set")
    if not hmac.compare_digest(bearer_token(request).encode(), expected.encode()):
        raise ApiError(401, "invalid_token", "wrong admin token")
    return flow


admin_router = APIRouter(prefix="/admin")


class _RefreshBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    view: str = "usage_daily"


class _WarmBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant_ids: list[str] = Field(min_length=1, max_length=1000)


@admin_router.post("/relay/run")
async def run_relay(flow: Flow = Depends(require_admin)) -> JSONResponse:  # noqa: B008
    """One relay pass: 200 with its counts, 503 ``relay_failed`` when a store failed
    (nothing of the failed batch is acked; the counts say what went before)."""
    _, relay = flow.require_clickhouse()
    try:
        result = await relay.run_once()
    except _DATABASE_DOWN as exc:
        raise ApiError(503, "database_unavailable", f"PostgreSQL: {type(exc).__name__}") from exc
    if result.error is not None:
        counts = {key: value for key, value in result.as_dict().items() if key != "error"}
        return JSONResponse(
            {"error": "relay_failed", "detail": result.error, **counts}, status_code=503
        )
    return JSONResponse(result.as_dict())


@admin_router.post("/views/refresh")
async def refresh_view(
    body: _RefreshBody | None = None,
    flow: Flow = Depends(require_admin),  # noqa: B008
) -> JSONResponse:
    """REFRESH MATERIALIZED VIEW CONCURRENTLY, then validation against the base query."""
    view = (body or _RefreshBody()).view
    if view not in views.VIEWS:
        raise ApiError(422, "unknown_view", f"known views: {', '.join(sorted(views.VIEWS))}")
    async with flow.pool.acquire() as conn:
        result = await views.refresh(conn, view)
    return JSONResponse(result.as_dict())


@admin_router.get("/references/check")
async def check_references(flow: Flow = Depends(require_admin)) -> JSONResponse:  # noqa: B008
    """Orphan events in ClickHouse and records missing from it (001#63)."""
    clickhouse, _ = flow.require_clickhouse()
    try:
        report = await references.check(flow.pool, clickhouse)
    except ClickHouseError as exc:
        raise ApiError(503, "clickhouse_unavailable", str(exc)) from exc
    return JSONResponse(report.as_dict())


@admin_router.post("/references/repair")
async def repair_references(flow: Flow = Depends(require_admin)) -> JSONResponse:  # noqa: B008
    """Delete orphan events, re-enqueue missing records (the relay copies them)."""
    clickhouse, _ = flow.require_clickhouse()
    try:
        result = await references.repair(flow.pool, clickhouse)
    except ClickHouseError as exc:
        raise ApiError(503, "clickhouse_unavailable", str(exc)) from exc
    return JSONResponse(result.as_dict())


async def outbox_pending(flow: Flow) -> int:
    """Outbox rows not relayed yet (``relay_lag``, ``apex_data_outbox_pending``)."""
    async with flow.pool.acquire() as conn:
        return await pending_count(conn)
