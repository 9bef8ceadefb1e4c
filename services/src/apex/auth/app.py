"""The apex.auth ASGI app: wiring, lifespan, health, metrics and JWKS."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from apex.auth import account, admin, authz, login_routes, oauth, sso_routes, teams, tenants
from apex.auth.context import AuthContext, require_admin
from apex.auth.guard import Guard, GuardMiddleware
from apex.auth.logins import IdentityServices
from apex.auth.metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from apex.auth.sessions import SessionStore
from apex.auth.tokens import Signer
from apex.common.config import ConfigError, Settings
from apex.common.http import BodyLimitMiddleware, install_error_handlers
from apex.common.ratelimit import SlidingWindowLimiter
from apex.data.migrations import load_migrations
from apex.data.pool import create_pool

__all__ = ["create_app", "reset_memory"]

log = logging.getLogger(__name__)

SERVICE = "apex.auth"
HEALTH_CHECK_TIMEOUT_SECONDS = 2.0


def create_app(settings: Settings) -> FastAPI:
    """The apex.auth app; PostgreSQL and Redis are opened by its lifespan."""
    database_url = settings.require("database_url", service=SERVICE)
    redis_url = settings.require("redis_url", service=SERVICE)
    try:
        signer = Signer.from_pem(
            settings.jwt_private_key, issuer=settings.jwt_issuer, audience=settings.jwt_audience
        )
    except ValueError as exc:
        raise ConfigError(f"APEX_JWT_PRIVATE_KEY: {exc}") from None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            pool = await create_pool(database_url)
        except (OSError, asyncpg.PostgresError) as exc:
            raise RuntimeError(
                f"{SERVICE}: cannot connect to PostgreSQL (APEX_DATABASE_URL): {exc!r}"
            ) from None
        redis = Redis.from_url(
            redis_url,
            decode_responses=True,
            socket_connect_timeout=5,
            socket_timeout=5,
            # One quick reconnect (a pooled connection may predate a Redis restart), not
            # redis-py's default ten: failover must notice an outage fast (apex.auth.guard).
            retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 1),
            # uvloop reports a connection the peer dropped as RuntimeError("handler is
            # closed"): retrying drops that connection and opens a new one, instead of
            # taking a healthy Redis for an outage.
            retry_on_error=[RuntimeError],
        )
        try:
            await _check_schema(pool)
            try:
                await redis.ping()
            except RedisError as exc:
                raise RuntimeError(
                    f"{SERVICE}: cannot connect to Redis (APEX_REDIS_URL): {exc!r}"
                ) from None
            app.state.auth = AuthContext(
                settings=settings,
                signer=signer,
                pool=pool,
                redis=redis,
                sessions=SessionStore(
                    redis, prefix=settings.redis_prefix, ttl=settings.jwt_refresh_ttl
                ),
                limiter=SlidingWindowLimiter(redis, prefix=settings.redis_prefix),
            )
            app.state.auth.guard = await Guard.start(app.state.auth, loader=teams.load_permissions)
            log.info("%s ready (signing key %s)", SERVICE, signer.kid)
            app.state.identity = IdentityServices.create(settings, redis)
            yield
        finally:
            if isinstance(app.state.auth, AuthContext) and app.state.auth.guard is not None:
                await app.state.auth.guard.stop()
            app.state.auth = None
            if isinstance(identity := getattr(app.state, "identity", None), IdentityServices):
                await identity.aclose()
            await redis.aclose()
            await pool.close()

    app = FastAPI(title=SERVICE, version="0.1.0", lifespan=lifespan)
    app.state.auth = None
    app.state.signer = signer
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(GuardMiddleware)
    # Outermost: every answer counts, the guard's and the body limit's refusals too.
    metrics = Metrics()
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.include_router(admin.router)
    app.include_router(account.router)
    app.include_router(oauth.router)
    app.include_router(login_routes.router)
    app.include_router(sso_routes.router)
    app.include_router(teams.router)
    app.include_router(authz.router)
    app.include_router(tenants.router)

    @app.get("/healthz")
    async def healthz(request: Request) -> JSONResponse:
        """200 when PostgreSQL and Redis answer, else 503 naming the failing check."""
        context = request.app.state.auth
        mode = "normal"
        if not isinstance(context, AuthContext):
            checks = {"postgres": "not started", "redis": "not started"}
        else:
            # With a guard, the Redis check is a probe: it also ends degraded mode.
            redis_probe = context.guard.resilience.probe() if context.guard else None
            postgres, redis_check = await asyncio.gather(
                _probe(context.pool.fetchval("SELECT 1")),
                redis_probe or _probe(context.redis.ping()),
            )
            checks = {"postgres": postgres, "redis": redis_check}
            if context.guard is not None:
                mode = context.guard.resilience.mode
        healthy = all(value == "ok" for value in checks.values())
        return JSONResponse(
            {"status": "ok" if healthy else "unavailable", "checks": checks, "mode": mode},
            status_code=200 if healthy else 503,
        )

    @app.get("/metrics", dependencies=[Depends(require_admin)])
    async def metrics_text() -> Response:
        """The Prometheus text exposition of this instance's metrics (admin token)."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/.well-known/jwks.json")
    async def jwks(request: Request) -> JSONResponse:
        """The public key that verifies our access tokens."""
        return JSONResponse(signer.jwks(), headers={"Cache-Control": "public, max-age=300"})

    return app


async def reset_memory(app: FastAPI) -> None:
    """Make a running app forget what it holds in memory, as if its lifespan had just
    started: the revocation cache and failover mode (a probe of Redis follows), cached
    permissions, the IdPs' metadata and keys. Its pools, clients, subscription and signing
    key stay. For a harness that keeps one app running between tests after emptying its
    PostgreSQL and Redis (apex_testkit at L2); a deployed instance never needs it.
    """
    context = app.state.auth
    if not isinstance(context, AuthContext):
        raise RuntimeError(f"{SERVICE}: reset_memory needs a running app (start its lifespan)")
    if context.guard is not None:
        await context.guard.reset()
    identity = getattr(app.state, "identity", None)
    if isinstance(identity, IdentityServices):
        identity.reset()


async def _probe(awaitable: Any) -> str:
    try:
        await asyncio.wait_for(awaitable, HEALTH_CHECK_TIMEOUT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - any failure is a failed check, reported by type
        return f"error: {type(exc).__name__}"
    return "ok"


@functools.cache
def _schema_head() -> int:
    """The newest migration this code ships (parsed once: every app start asks)."""
    return load_migrations()[-1].version


async def _check_schema(pool: asyncpg.Pool) -> None:
    """Refuse to start on a database that lacks this code's migrations."""
    head = _schema_head()
    current = 0
    if await pool.fetchval("SELECT to_regclass('apex_schema_migrations') IS NOT NULL"):
        current = await pool.fetchval(
            "SELECT coalesce(max(version), 0) FROM apex_schema_migrations"
        )
    if current < head:
        raise RuntimeError(
            f"the database schema is at version {current}, {SERVICE} needs {head}: "
            "run `python -m apex.data migrate` (with the same APEX_DATABASE_URL)"
        )
