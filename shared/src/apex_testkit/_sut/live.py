"""L2: apps kept running between tests, for the services that can forget what they hold.

A service whose module offers `reset_memory(app)` (the service contract, apex.topology)
keeps its app AND its lifespan (pools, Redis clients, schema check, subscriptions, the
background tasks) running per worker, settings and instance number, in an event loop of
the worker's own (a daemon thread: `BackgroundLoop`). A test's client reaches it from the
test's event loop through `LoopTransport`. Whenever a client is opened on an app that no
other client is using, `reset_memory(app)` runs first, so each client sees the app as a
freshly started one would, as when every client had an app and a lifespan of its own;
the servers behind it are emptied by `clean_platform` as before. Concurrent clients of
one instance number and settings share the app: one instance, as a process is at L3.
A service that calls it (apex.data and the gateway call apex.auth) reaches the same app
on a loopback socket of the test's loop (`serving`: a forwarding ASGI app under
`serving_asgi`), as it would reach the worker's process at L3.

What this saves is the lifespan, about 15 ms a client; what it costs is a thread hop per
request (tens of microseconds). Without the hook a service keeps a lifespan per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from asgi_lifespan import LifespanManager

from apex_testkit._loop import BackgroundLoop
from apex_testkit._processes import listening_socket
from apex_testkit._sut.asgi_serving import serving_asgi

__all__ = ["RESET_HOOK", "LiveApps", "LoopTransport"]

# The function of a service module that makes a running app forget what it holds.
RESET_HOOK = "reset_memory"
# Running apps a worker keeps: each holds connections (a PostgreSQL pool, Redis clients,
# a subscription). Past it the least recently used idle one is stopped.
MAX_LIVE = 8
STARTUP_TIMEOUT = 30.0

Key = tuple[str, tuple[tuple[str, str], ...], int]


class LoopTransport(httpx.AsyncBaseTransport):
    """httpx transport to an ASGI app that runs in another thread's event loop."""

    def __init__(self, app: Any, loop: BackgroundLoop) -> None:
        self._asgi = httpx.ASGITransport(app=app)
        self._loop = loop

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # The body is read here, in the caller's loop; the answer comes back whole
        # (ASGITransport buffers it), so its stream may be read in any loop.
        await request.aread()
        return await self._loop.run_async(self._asgi.handle_async_request(request))


@dataclass
class _Running:
    """One app whose lifespan runs in the apps' loop."""

    app: Any  # what create_app made: the reset hook's argument
    asgi: Any  # what the lifespan manager serves (the app, with lifespan state)
    stop: asyncio.Event
    task: asyncio.Task[None]
    users: int = 0
    broken: bool = field(default=False)


class LiveApps:
    """The running apps of one worker, by module, settings and instance number."""

    def __init__(self, make_app: Callable[[str, Mapping[str, str]], Any]) -> None:
        self._make_app = make_app
        self._loop = BackgroundLoop("apex-testkit-apps")
        self._running: dict[Key, _Running] = {}

    @staticmethod
    def shares(module_name: str) -> bool:
        """Whether `module_name` offers the reset hook (its apps can be kept running)."""
        return callable(getattr(importlib.import_module(module_name), RESET_HOOK, None))

    @asynccontextmanager
    async def client(
        self, module_name: str, env: Mapping[str, str], instance: int, base_url: str
    ) -> AsyncIterator[httpx.AsyncClient]:
        """A client of the running app of `module_name` with `env` and number `instance`,
        its memory reset first unless another client is using it."""
        async with (
            self._using(module_name, env, instance) as transport,
            httpx.AsyncClient(transport=transport, base_url=base_url) as client,
        ):
            yield client

    @asynccontextmanager
    async def serving(
        self, module_name: str, env: Mapping[str, str], instance: int
    ) -> AsyncIterator[str]:
        """The running app of `module_name` (as `client` finds it) served on a loopback
        socket in the caller's loop, for the services that call it over HTTP: yields the
        http:// base URL. What it saves over a fresh app served there is the app's
        lifespan, about 0.1 s."""
        async with self._using(module_name, env, instance) as transport:
            sock = listening_socket()
            host, port = sock.getsockname()[:2]
            try:
                async with serving_asgi(_Forward(transport), sock, module_name):
                    yield f"http://{host}:{port}"
            finally:
                sock.close()

    @asynccontextmanager
    async def _using(
        self, module_name: str, env: Mapping[str, str], instance: int
    ) -> AsyncIterator[LoopTransport]:
        key: Key = (module_name, tuple(sorted(env.items())), instance)
        running = await self._checkout(key)
        running.users += 1
        failed = True
        try:
            yield LoopTransport(running.asgi, self._loop)
            failed = False
        finally:
            running.users -= 1
            # A test that failed inside the block may have left the app mid-request:
            # the next client gets a fresh one.
            running.broken = running.broken or failed

    @property
    def running_apps(self) -> tuple[Any, ...]:
        """The apps running now (what create_app made), least recently used first."""
        return tuple(running.app for running in self._running.values())

    def close(self) -> None:
        """Stop every running app, then the apps' loop."""
        running, self._running = list(self._running.values()), {}
        for app in running:
            self._loop.run(_stop(app), timeout=STARTUP_TIMEOUT * 2)
        self._loop.stop()

    async def _checkout(self, key: Key) -> _Running:
        running = self._running.pop(key, None)
        if running is not None and running.users == 0 and (running.broken or running.task.done()):
            await self._loop.run_async(_stop(running))
            running = None
        if running is None:
            await self._evict()
            app = self._make_app(key[0], dict(key[1]))
            running = await self._loop.run_async(_start(app))
        self._running[key] = running  # the most recently used last
        if running.users == 0:
            hook = getattr(importlib.import_module(key[0]), RESET_HOOK)
            try:
                await self._loop.run_async(hook(running.app))
            except BaseException:
                running.broken = True  # the next client starts a fresh one
                raise
        return running

    async def _evict(self) -> None:
        idle = [key for key, running in self._running.items() if running.users == 0]
        while len(self._running) >= MAX_LIVE and idle:
            await self._loop.run_async(_stop(self._running.pop(idle.pop(0))))


class _Forward:
    """An ASGI app that hands each HTTP request to a running app of the apps' loop (through
    `transport`) and sends its answer back as it came, bytes and headers unchanged."""

    def __init__(self, transport: LoopTransport) -> None:
        self._transport = transport

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # the running app's lifespan is kept elsewhere
            while True:
                phase = (await receive())["type"].removeprefix("lifespan.")
                await send({"type": f"lifespan.{phase}.complete"})
                if phase == "shutdown":
                    return
        if scope["type"] != "http":
            raise RuntimeError(f"a kept-running app is served for HTTP only, not {scope['type']}")
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        request = httpx.Request(
            scope["method"],
            "http://live.apex.test" + target.decode("ascii"),
            headers=scope["headers"],
            content=bytes(body),
        )
        response = await self._transport.handle_async_request(request)
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
        start = {"type": "http.response.start", "status": response.status_code}
        await send({**start, "headers": response.headers.raw})
        await send({"type": "http.response.body", "body": raw})


async def _start(app: Any) -> _Running:
    """Start `app`'s lifespan in the running loop (the apps' loop); it runs until stopped."""
    loop = asyncio.get_running_loop()
    started: asyncio.Future[Any] = loop.create_future()
    stop = asyncio.Event()

    async def hold() -> None:
        try:
            async with LifespanManager(
                app, startup_timeout=STARTUP_TIMEOUT, shutdown_timeout=STARTUP_TIMEOUT
            ) as manager:
                started.set_result(manager.app)
                await stop.wait()
        except Exception as exc:
            if started.done():
                raise
            started.set_exception(exc)  # the start-up failed: its caller raises it

    task = loop.create_task(hold(), name="apex-testkit-lifespan")
    asgi = await started
    return _Running(app=app, asgi=asgi, stop=stop, task=task)


async def _stop(running: _Running) -> None:
    """End `running`'s lifespan (in the apps' loop)."""
    running.stop.set()
    with contextlib.suppress(Exception):  # a failed shutdown leaves nothing to undo here
        await running.task
