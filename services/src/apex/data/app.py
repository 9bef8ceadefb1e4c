"""The apex.data ASGI app: wiring, lifespan and health."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from apex.common.http import BodyLimitMiddleware, install_error_handlers
from apex.data.flow import install_flow
from apex.data.metrics import Metrics
from apex.data.routes import router
from apex.data.service import DataService, install_data_errors, open_service
from apex.data.settings import DataSettings

__all__ = ["create_app"]

SERVICE = "apex.data"
# A batch of records is bigger than the platform's default body limit.
MAX_BODY_BYTES = 8 * 1024 * 1024


def create_app(settings: DataSettings) -> FastAPI:
    """The apex.data app; its stores are opened by its lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_service(settings) as service:
            app.state.service = service
            try:
                yield
            finally:
                app.state.service = None

    app = FastAPI(title=SERVICE, version="0.1.0", lifespan=lifespan)
    app.state.service = None
    install_error_handlers(app)
    install_data_errors(app, _metrics_of)
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES)
    app.include_router(router)

    @app.get("/healthz")
    async def healthz(request: Request) -> JSONResponse:
        """200 with each dependency's check; 503 when the primary or Redis is down;
        ``degraded`` (still 200) while apex.auth is down: the keys it cached verify
        context tokens meanwhile."""
        service = request.app.state.service
        if not isinstance(service, DataService):
            checks = {"postgres": "not started", "redis": "not started"}
        else:
            checks = await service.health()
        healthy = checks["postgres"] == "ok" and checks["redis"] == "ok"
        status = "unavailable"
        if healthy:
            status = "ok" if checks.get("auth") == "ok" else "degraded"
        return JSONResponse(
            {"status": status, "checks": checks}, status_code=200 if healthy else 503
        )

    # -- data-flow: outbox relay, analytics, transfers, views, references, cache --------
    install_flow(app)

    return app


def _metrics_of(request: Request) -> Metrics | None:
    service = request.app.state.service
    return service.metrics if isinstance(service, DataService) else None
