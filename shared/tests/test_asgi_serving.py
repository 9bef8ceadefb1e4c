"""L2 serving of an ASGI app without uvicorn's ticks: lifespan order, requests in flight,
a failed start-up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from apex_testkit import eventually
from apex_testkit._processes import listening_socket
from apex_testkit._sut.asgi_serving import serving_asgi


def _app(
    events: list[str], release: asyncio.Event | None = None, *, fail: bool = False
) -> Starlette:
    async def slow(request: Request) -> JSONResponse:
        events.append("request")
        if release is not None:
            await release.wait()
        events.append("response")
        return JSONResponse({"ok": True})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if fail:
            raise RuntimeError("no database")
        events.append("startup")
        yield
        events.append("shutdown")

    return Starlette(routes=[Route("/slow", slow)], lifespan=lifespan)


async def test_the_lifespan_wraps_the_block_and_a_request_in_flight_finishes_first():
    events: list[str] = []
    release = asyncio.Event()
    sock = listening_socket()
    host, port = sock.getsockname()[:2]
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
        async with serving_asgi(_app(events, release), sock, "toy") as stop:
            assert events == ["startup"]
            in_flight = asyncio.create_task(client.get("/slow"))

            async def reached() -> bool:
                return "request" in events

            await eventually(reached, timeout=10, message="the request reached the app")
            stopping = asyncio.create_task(stop())

            async def refusing() -> bool:  # the listening socket is closed
                return sock.fileno() == -1

            await eventually(refusing, timeout=10, message="new connections refused")
            assert not stopping.done(), "stopped with a request in flight"
            assert "shutdown" not in events, "the lifespan ended with a request in flight"
            release.set()
            assert (await in_flight).json() == {"ok": True}
            await stopping
            assert events == ["startup", "request", "response", "shutdown"]
        with pytest.raises(httpx.ConnectError):
            await client.get("/slow")
    sock.close()


async def test_a_start_up_that_fails_is_a_clear_error():
    sock = listening_socket()
    with pytest.raises(RuntimeError, match="toy: its lifespan start-up failed"):
        async with serving_asgi(_app([], fail=True), sock, "toy"):
            pytest.fail("served although its lifespan start-up failed")
    sock.close()
