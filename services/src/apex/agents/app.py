"""The apex.agents ASGI app: wiring, lifespan (with its worker tasks) and health."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from apex.agents import definition_routes
from apex.agents.config import reload_on_signal
from apex.agents.routes import router
from apex.agents.service import AgentService, open_service
from apex.agents.settings import AgentSettings
from apex.agents.tracing import ServerSpans
from apex.common.http import BodyLimitMiddleware, install_error_handlers

__all__ = ["create_app"]

SERVICE = "apex.agents"


def create_app(settings: AgentSettings, *, reload_on_sighup: bool = False) -> FastAPI:
    """The apex.agents app; its lifespan opens its stores and starts APEX_AGENTS_WORKERS
    worker tasks (and, with ``reload_on_sighup``: ``python -m apex.agents``, reloads the
    config on SIGHUP; never in a test's process)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_service(settings, workers=settings.workers) as service:
            app.state.service = service
            if reload_on_sighup:
                loop = asyncio.get_running_loop()
                loop.add_signal_handler(signal.SIGHUP, reload_on_signal, service.config)
            try:
                yield
            finally:
                if reload_on_sighup:
                    loop.remove_signal_handler(signal.SIGHUP)
                app.state.service = None

    app = FastAPI(title=SERVICE, version="0.1.0", lifespan=lifespan)
    app.state.service = None
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(ServerSpans)
    app.include_router(router)
    app.include_router(definition_routes.router)

    @app.get("/healthz")
    async def healthz(request: Request) -> JSONResponse:
        """200 with each dependency's check; 503 when PostgreSQL or Redis is down, or
        every provider's breaker is open."""
        service = request.app.state.service
        if not isinstance(service, AgentService):
            checks: dict[str, object] = {"postgres": "not started", "redis": "not started"}
            healthy = False
        else:
            checks = dict(await service.health())
            healthy = all(value == "ok" for value in checks.values())
            # Breakers: the service answers runs while one provider may be asked.
            checks["providers"] = service.providers.states()
            healthy = healthy and service.providers.available()
        return JSONResponse(
            {"status": "ok" if healthy else "unavailable", "checks": checks},
            status_code=200 if healthy else 503,
        )

    return app
