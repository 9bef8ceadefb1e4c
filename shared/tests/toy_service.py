"""A toy platform service, for the selftest that adds a service without changing the kit.

It obeys the service contract of apex.topology: `load_settings(env)`, `create_app(settings)`
(an ASGI app answering GET /healthz), and `python -m toy_service --fd N` serving that app
on an inherited socket. GET /wiring shows what it was wired to: it counts a hit in its
Redis (under its key prefix) and asks the auth service it calls for /healthz.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import uvicorn
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

# The setting naming the auth service the toy calls (its topology entry says so).
AUTH_URL = "TOY_AUTH_URL"


@dataclass(frozen=True)
class ToySettings:
    redis_url: str
    redis_prefix: str
    auth_url: str | None


def load_settings(env: Mapping[str, str] | None = None) -> ToySettings:
    """The toy's settings from `env` (default: the process environment)."""
    env = os.environ if env is None else env
    return ToySettings(
        redis_url=env["APEX_REDIS_URL"],
        redis_prefix=env.get("APEX_REDIS_PREFIX", ""),
        auth_url=env.get(AUTH_URL),
    )


def create_app(settings: ToySettings) -> Starlette:
    """The toy's ASGI app."""
    redis = Redis.from_url(settings.redis_url)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await redis.ping()  # a toy that cannot reach its Redis does not start
        try:
            yield
        finally:
            await redis.aclose()

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def wiring(request: Request) -> JSONResponse:
        hits = await redis.incr(f"{settings.redis_prefix}toy:hits")
        auth = None
        if settings.auth_url is not None:
            async with httpx.AsyncClient(base_url=settings.auth_url, timeout=10) as client:
                auth = (await client.get("/healthz")).json()["status"]
        return JSONResponse({"hits": hits, "auth": auth})

    routes = [Route("/healthz", healthz), Route("/wiring", wiring)]
    return Starlette(routes=routes, lifespan=lifespan)


def main(argv: list[str] | None = None) -> int:
    """`python -m toy_service --fd N`: serve the app on the inherited socket N."""
    parser = argparse.ArgumentParser(prog="python -m toy_service")
    parser.add_argument("--fd", type=int, required=True, help="inherited listening socket")
    args = parser.parse_args(argv)
    app = create_app(load_settings())
    config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=args.fd)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
