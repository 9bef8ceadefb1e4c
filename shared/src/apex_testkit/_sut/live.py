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

`served` does the same for a service served on a loopback socket (an ASGI app under
uvicorn, or a service's own server such as the gateway's, `reset_memory(server)`): the
server keeps running in the apps' loop between tests, and a test reaches it over its
socket from its own loop, as it reaches an L3 process.

What this saves is the lifespan, about 15 ms a client (a served gateway with the auth it
calls: about 30 ms a test, and its pools stay warm); what it costs is a thread hop per
request (tens of microseconds). Without the hook a service keeps a lifespan per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
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
# Served ones among them: each is a subscriber of the worker's pub/sub channels (an idle
# gateway still receives every message published in the worker), so fewer are kept.
MAX_SERVED = 4
STARTUP_TIMEOUT = 30.0

# (how it is reached: "client" or "served", module, settings, instance number)
Key = tuple[str, str, tuple[tuple[str, str], ...], int]


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

    app: Any  # what create_app or create_server made: the reset hook's argument
    asgi: Any  # what the lifespan manager serves (the app, with lifespan state); None: served
    stop: asyncio.Event
    task: asyncio.Task[None]
    url: str = ""  # served: http://host:port of its socket
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
        key: Key = ("client", module_name, tuple(sorted(env.items())), instance)

        async def start() -> _Running:
            return await self._loop.run_async(_start(self._make_app(module_name, env)))

        async with self._held(key, start) as running:
            transport = LoopTransport(running.asgi, self._loop)
            async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
                yield client

    @asynccontextmanager
    async def served(
        self, module_name: str, env: Mapping[str, str], instance: int
    ) -> AsyncIterator[str]:
        """http://host:port of the running server of `module_name` with `env` and number
        `instance` (its socket served in the apps' loop), its memory reset first unless
        another test's block is using it."""
        key: Key = ("served", module_name, tuple(sorted(env.items())), instance)
        async with self._held(key, lambda: self._serve(module_name, env)) as running:
            yield running.url

    @asynccontextmanager
    async def _held(
        self, key: Key, start: Callable[[], Awaitable[_Running]]
    ) -> AsyncIterator[_Running]:
        running = await self._checkout(key, start)
        running.users += 1
        failed = True
        try:
            yield running
            failed = False
        finally:
            running.users -= 1
            # A test that failed inside the block may have left the app mid-request:
            # the next client gets a fresh one.
            running.broken = running.broken or failed

    async def _serve(self, module_name: str, env: Mapping[str, str]) -> _Running:
        module = importlib.import_module(module_name)
        if hasattr(module, "create_app"):
            app = self._make_app(module_name, env)
            return await self._loop.run_async(_start_serving(app, module_name, serving_asgi))
        server = module.create_server(module.load_settings(dict(env)))
        return await self._loop.run_async(_start_serving(server, module_name, None))

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

    async def _checkout(self, key: Key, start: Callable[[], Awaitable[_Running]]) -> _Running:
        running = self._running.pop(key, None)
        if running is not None and running.users == 0 and (running.broken or running.task.done()):
            await self._loop.run_async(_stop(running))
            running = None
        if running is None:
            await self._evict(key[0])
            running = await start()
            # Another client of the same app (a test opening two at once) may have started
            # one while this one was starting: the first to finish is the instance, the
            # other is stopped, never left running unreferenced until the process ends.
            first = self._running.pop(key, None)
            if first is not None:
                await self._loop.run_async(_stop(running))
                running = first
        self._running[key] = running  # the most recently used last
        if running.users == 0:
            hook = getattr(importlib.import_module(key[1]), RESET_HOOK)
            try:
                await self._loop.run_async(hook(running.app))
            except BaseException:
                running.broken = True  # the next client starts a fresh one
                raise
        return running

    async def _evict(self, kind: str) -> None:
        """Make room for one more app of `kind`: stop the least recently used idle ones
        past MAX_LIVE in all, or past MAX_SERVED served ones for a served one."""
        idle = [key for key, running in self._running.items() if running.users == 0]
        while len(self._running) >= MAX_LIVE and idle:
            await self._loop.run_async(_stop(self._running.pop(idle.pop(0))))
        served = [key for key in idle if key[0] == "served" and key in self._running]

        def count() -> int:
            return sum(1 for key in self._running if key[0] == "served")

        while kind == "served" and count() >= MAX_SERVED and served:
            await self._loop.run_async(_stop(self._running.pop(served.pop(0))))


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


async def _start_serving(
    target: Any, name: str, asgi: Callable[[Any, socket.socket, str], Any] | None
) -> _Running:
    """Serve `target` on a new loopback socket in the running loop (the apps' loop) until
    stopped: an ASGI app under uvicorn (`asgi` is `serving_asgi`), else the service's own
    server (`target.serving(sock=...)`)."""
    loop = asyncio.get_running_loop()
    started: asyncio.Future[None] = loop.create_future()
    stop = asyncio.Event()
    sock = listening_socket()
    host, port = sock.getsockname()[:2]
    serving = asgi(target, sock, name) if asgi is not None else target.serving(sock=sock)

    async def hold() -> None:
        try:
            async with serving:
                started.set_result(None)
                await stop.wait()
        except Exception as exc:
            if started.done():
                raise
            started.set_exception(exc)  # the start-up failed: its caller raises it
        finally:
            sock.close()

    task = loop.create_task(hold(), name=f"apex-testkit-serving-{name}")
    await started
    return _Running(app=target, asgi=None, stop=stop, task=task, url=f"http://{host}:{port}")


async def _stop(running: _Running) -> None:
    """End `running`'s lifespan (in the apps' loop)."""
    running.stop.set()
    with contextlib.suppress(Exception):  # a failed shutdown leaves nothing to undo here
        await running.task
