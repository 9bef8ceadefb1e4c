"""The apex.data ASGI app: wiring, lifespan and health."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from apex.common.http import BodyLimitMiddleware, install_error_handlers
from apex.data.flow import install_flow
from apex.data.settings import DataSettings

__all__ = ["create_app"]

SERVICE = "apex.data"


def create_app(settings: DataSettings) -> FastAPI:
    """The apex.data app; its stores are opened by its lifespan."""
    app = FastAPI(title=SERVICE, version="0.1.0")
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """200 while the service runs (the checks of each store come with the stores)."""
        return JSONResponse({"status": "ok", "checks": {}})

    # -- data-flow: outbox relay, analytics, transfers, views, references, cache --------
    install_flow(app, settings)

    return app
