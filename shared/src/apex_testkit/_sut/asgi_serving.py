"""L2: an ASGI app served by uvicorn in the test's event loop, up and down without polls.

uvicorn's `Server.serve` wakes every 0.1 s to see whether it should exit, sleeps 0.1 s
before its shutdown and polls open connections every 0.1 s: about 0.15 s per stop, and a
start seen only by polling `started`. An L2 test that serves a service (every WebSocket
test: the gateway calls apex.auth over HTTP) paid that on each test. `serving_asgi` runs
the same uvicorn server (same protocol classes, same lifespan) but is told to stop by an
event, says it started by an event, and waits for its connections with a fast-growing
poll: the same order of shutdown (stop accepting, close idle keep-alive connections, let
requests in flight finish, then the app's lifespan shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import uvicorn

from apex_testkit._waiting import eventually

# Requests still in flight when a test ends get this long to finish (they normally have
# none: the test awaited its responses, and the callers' clients are closed first).
DRAIN_SECONDS = 30.0


class _Server(uvicorn.Server):
    """uvicorn's Server, started and stopped by events instead of its 0.1 s ticks."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()
        self.stop = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()

    async def main_loop(self) -> None:
        await self.on_tick(0)  # sets the default headers (Date, Server) once
        await self.stop.wait()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()  # closes an idle keep-alive connection at once

        async def drained() -> bool:
            return not self.server_state.connections and not self.server_state.tasks

        await eventually(
            drained, timeout=DRAIN_SECONDS, interval=0.001, max_interval=0.05, message="requests"
        )
        for server in self.servers:
            await server.wait_closed()
        await self.lifespan.shutdown()


@contextlib.asynccontextmanager
async def serving_asgi(
    app: Any, sock: socket.socket, name: str
) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Serve `app` (named `name` in errors) on the listening `sock` until the block exits
    or the `stop()` it hands out is awaited (a graceful stop: the app's lifespan ends)."""
    config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False)
    server = _Server(config)

    async def serve() -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit:  # uvicorn's answer to a failed lifespan start-up
            raise RuntimeError(f"{name}: its lifespan start-up failed (logged above)") from None

    task = asyncio.create_task(serve())
    ready = asyncio.create_task(server.ready.wait())
    try:
        done, _ = await asyncio.wait({task, ready}, timeout=30, return_when="FIRST_COMPLETED")
        if task in done:  # it stopped during start-up: say why
            task.result()
            raise RuntimeError(f"{name} exited during start-up")
        if ready not in done:
            raise TimeoutError(f"{name} not serving after 30 s")
    except BaseException:
        ready.cancel()
        task.cancel()  # a start-up that failed or hangs has nothing to drain
        await asyncio.wait({task})
        raise

    async def stop() -> None:
        server.stop.set()
        await asyncio.wait({task})
        task.result()  # a failed shutdown says why

    try:
        yield stop
    finally:
        await stop()
