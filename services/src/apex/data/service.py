"""The running data service: its stores, and how a request's database work is run.

:class:`DataService` holds what the lifespan opened (the router over the primary and
replica pools, Redis, ClickHouse, the context-token verifier, the metrics) and runs a
request's database work with the retries of :mod:`apex.data.retry`. The errors of that
work become the contract's answers in :func:`install_data_errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final, TypeVar

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from redis.asyncio import Redis
from redis.exceptions import RedisError

from apex.common.http import error_response
from apex.data.callers import Verifier
from apex.data.clickhouse import ClickHouse
from apex.data.metrics import Metrics
from apex.data.pool import DatabasePool, PoolExhausted
from apex.data.retry import DatabaseUnavailable, RetryExhausted, retrying
from apex.data.router import Router
from apex.data.settings import DataSettings

__all__ = ["DataService", "install_data_errors", "open_service"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")
HEALTH_TIMEOUT: Final = 2.0
CONNECT_TIMEOUT: Final = 10.0


@dataclasses.dataclass
class DataService:
    """The data service's stores and settings, for the routes."""

    settings: DataSettings
    metrics: Metrics
    router: Router
    redis: Redis
    clickhouse: ClickHouse | None
    verifier: Verifier

    async def run(self, work: Callable[[], Awaitable[_T]]) -> _T:
        """``await work()`` with the deadlock, serialization and reconnect retries."""
        return await retrying(
            work,
            attempts=self.settings.retries,
            backoff=self.settings.retry_backoff,
            connect_deadline=self.settings.connect_deadline,
            metrics=self.metrics,
        )

    async def health(self) -> dict[str, str]:
        """The check of each store: ok, or why not (replica: ok|lagging|down|absent), and
        of apex.auth, whose keys verify context tokens (ok, or down: why)."""
        postgres, redis, clickhouse, auth = await asyncio.gather(
            _probe(self._postgres_ok()),
            _probe(self._redis_ok()),
            _probe(self._clickhouse_ok()),
            self.verifier.probe(HEALTH_TIMEOUT),
        )
        replica = await self.router.measure() if self.router.replica is not None else "absent"
        return {
            "postgres": postgres,
            "replica": replica,
            "redis": redis,
            "clickhouse": clickhouse,
            "auth": auth,
        }

    async def _postgres_ok(self) -> str:
        async with self.router.primary.connection() as conn:
            await conn.fetchval("SELECT 1")
        return "ok"

    async def _redis_ok(self) -> str:
        await self.redis.ping()
        return "ok"

    async def _clickhouse_ok(self) -> str:
        if self.clickhouse is None:
            return "absent"
        return "ok" if await self.clickhouse.ping() else "down"


async def _probe(check: Awaitable[str]) -> str:
    try:
        return await asyncio.wait_for(check, HEALTH_TIMEOUT)
    except (OSError, TimeoutError, RedisError, asyncpg.PostgresError, PoolExhausted) as exc:
        return f"down: {type(exc).__name__}"
    except asyncpg.InterfaceError as exc:
        return f"down: {type(exc).__name__}"


@contextlib.asynccontextmanager
async def open_service(settings: DataSettings) -> AsyncIterator[DataService]:
    """Open the stores of ``settings`` (connections open lazily: the service starts while
    PostgreSQL is down), and close them after the block."""
    metrics = Metrics()

    def pool(name: str, dsn: str) -> DatabasePool:
        return DatabasePool(
            name,
            dsn,
            size=settings.pool_size,
            timeout=settings.pool_timeout,
            statement_timeout=settings.statement_timeout,
            connect_timeout=min(CONNECT_TIMEOUT, settings.connect_deadline),
            metrics=metrics,
        )

    primary = pool("primary", settings.database_url)
    replica = pool("replica", settings.replica_url) if settings.replica_url else None
    router = Router(
        primary,
        replica,
        max_lag_bytes=settings.replica_max_lag_bytes,
        lag_check=settings.replica_lag_check,
        metrics=metrics,
    )
    redis = Redis.from_url(
        settings.redis_url, decode_responses=True, socket_connect_timeout=2, socket_timeout=5
    )
    clickhouse = ClickHouse.from_url(settings.clickhouse_url) if settings.clickhouse_url else None
    verifier = Verifier(settings.auth_url, settings.jwt_issuer)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(verifier.aclose)
        stack.push_async_callback(redis.aclose)
        if clickhouse is not None:
            stack.push_async_callback(clickhouse.close)
        await primary.open()
        stack.push_async_callback(primary.close)
        if replica is not None:
            await replica.open()
            stack.push_async_callback(replica.close)
        await router.start()
        stack.push_async_callback(router.stop)
        yield DataService(settings, metrics, router, redis, clickhouse, verifier)


def install_data_errors(app: FastAPI, metrics_of: Callable[[Request], Metrics | None]) -> None:
    """The contract's answers to the data layer's errors."""

    async def exhausted(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, PoolExhausted)  # noqa: S101 - registered for it alone
        return error_response(
            503,
            "pool_exhausted",
            f"every {exc.pool} database connection is busy; retry later",
            {"Retry-After": str(max(1, math.ceil(exc.timeout)))},
        )

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        return error_response(503, "database_unavailable", f"PostgreSQL is unreachable: {exc}")

    async def conflict(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RetryExhausted)  # noqa: S101 - registered for it alone
        return error_response(
            409,
            "conflict_retry_exhausted",
            f"the transaction lost a {exc.reason} {exc.attempts} time(s); nothing was written",
        )

    async def timed_out(request: Request, exc: Exception) -> JSONResponse:
        metrics = metrics_of(request)
        if metrics is not None:
            metrics.statement_timeouts.inc()
        return error_response(
            504,
            "statement_timeout",
            "the query ran past APEX_DB_STATEMENT_TIMEOUT and was cancelled",
        )

    app.add_exception_handler(PoolExhausted, exhausted)
    app.add_exception_handler(DatabaseUnavailable, unavailable)
    app.add_exception_handler(RetryExhausted, conflict)
    app.add_exception_handler(asyncpg.QueryCanceledError, timed_out)
