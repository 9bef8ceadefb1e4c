"""L2: the platform imported, in the test process.

A client of a service that can reset its memory (`reset_memory(app)`) reaches the
worker's running app of that service, settings and instance number, its lifespan kept
between tests in the worker's apps loop and its memory reset whenever a client opens it
idle (`live.LiveApps`). A client of any other service gets an app instance of its own
behind httpx's ASGI transport, its lifespan run in the test's event loop. `serve` of such
a service (when the services it calls can reset theirs too) likewise hands out the
worker's running server of those settings and number, served in the apps' loop, as an L3
test shares the worker's process; any other `serve`, and every `start` (an instance the
test may stop), serves a fresh instance (and the services it calls) on loopback sockets
inside the test's own event loop. All through the service contract:
`<module>.load_settings(env)`, then `create_app(settings)` (run under uvicorn) or
`create_server(settings)` (its own server). Apps are reused by later tests of the worker
with the same settings, each time with a fresh lifespan (`apps.AppPool`); a service served
afresh keeps its address from one test to the next (`Addresses`), so the settings of the
services calling it stay the same too.
"""

from __future__ import annotations

import contextlib
import importlib
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager

import httpx
from asgi_lifespan import LifespanManager

from apex_testkit._level import Level
from apex_testkit._processes import bound_socket, listening_socket
from apex_testkit._sut import wiring
from apex_testkit._sut.apps import AppPool, IdlePool, make_app
from apex_testkit._sut.asgi_serving import serving_asgi
from apex_testkit._sut.live import LiveApps
from apex_testkit._sut.platform import Platform, RunningService
from apex_testkit._worker import Worker


class InProcessPlatform(Platform):
    """L2: the platform in the test process: kept-running apps for clients of services that
    can reset their memory, fresh lifespans in the test's event loop for the rest."""

    level = Level.L2

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.apps = AppPool()
        self.live = LiveApps(make_app)
        self.addresses = Addresses()

    @property
    def admin_token(self) -> str:
        return wiring.run_secrets(self.worker.run)["admin_token"]

    @asynccontextmanager
    async def _client(
        self, service: str, instance: int, settings: Mapping[str, str]
    ) -> AsyncIterator[httpx.AsyncClient]:
        env = {**wiring.service_env(self.worker, service), **settings}
        base = f"http://{service}.apex.test"
        module_name = wiring.module(service)
        calls = {c: s for c, s in wiring.calls(service).items() if s not in settings}
        # A kept-running app lives in the worker's apps loop; the services it calls would
        # be served in this test's loop, so only a service that calls none is shared.
        if self.live.shares(module_name) and not calls:
            async with self.live.client(module_name, env, instance, base) as client:
                yield client
            return
        # Every client is an app instance of its own, whatever `instance` says.
        async with contextlib.AsyncExitStack() as stack:
            # The services it calls, served on loopback sockets (as `_start` does).
            for called, setting in calls.items():
                env[setting] = await stack.enter_async_context(self._serve(called, 0, {}))
            with self.apps.app(module_name, env) as app:
                async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
                    transport = httpx.ASGITransport(app=manager.app)
                    async with httpx.AsyncClient(transport=transport, base_url=base) as client:
                        yield client

    @asynccontextmanager
    async def _serve(
        self, service: str, instance: int, settings: Mapping[str, str]
    ) -> AsyncIterator[str]:
        if not self._serves_live(service, settings):
            # A fresh instance in the test's loop, on the address the worker's earlier
            # instances of these settings had.
            fresh = self._start(service, settings, cold=False, keep_address=True)
            async with fresh as running:
                yield running.url
            return
        # The worker's running server of these settings and number (its memory reset),
        # as an L3 test shares the worker's process; the services it calls likewise.
        async with contextlib.AsyncExitStack() as stack:
            env = wiring.service_env(self.worker, service)
            for called, setting in wiring.calls(service).items():
                env[setting] = await stack.enter_async_context(self._serve(called, 0, {}))
            served = self.live.served(wiring.module(service), {**env, **settings}, instance)
            yield wiring.service_url(service, await stack.enter_async_context(served))

    def _serves_live(self, service: str, settings: Mapping[str, str]) -> bool:
        """Whether `service` with `settings` is served by a server kept running between
        tests: its module offers the reset hook, and so (served alike) does every service it
        calls, none of which the settings point elsewhere (a proxy of the test's own)."""
        calls = wiring.calls(service)
        return (
            self.live.shares(wiring.module(service))
            and not set(calls.values()) & set(settings)
            and all(self._serves_live(called, {}) for called in calls)
        )

    @asynccontextmanager
    async def _start(
        self,
        service: str,
        settings: Mapping[str, str],
        *,
        cold: bool,
        keep_address: bool = False,
    ) -> AsyncIterator[RunningService]:
        """A fresh instance in the test's loop, on a new socket (`start`: the test may stop
        it, and then its address refuses connections) or, `keep_address`, on the address
        the worker's earlier instances of these settings had (`Addresses`)."""
        # `cold` changes nothing here: L2 has no interpreter to start, and every start runs
        # the app's lifespan afresh (the app object may be a pooled one, as for clients).
        async with contextlib.AsyncExitStack() as stack:
            env = wiring.service_env(self.worker, service)
            for called, setting in wiring.calls(service).items():
                if setting not in settings:  # a test may point it elsewhere (a proxy)
                    env[setting] = await stack.enter_async_context(self._serve(called, 0, {}))
            env = {**env, **settings}
            if keep_address:
                # A duplicate: the instance closes it as it stops; then the listener
                # closes and the address refuses connections until its next instance.
                kept = stack.enter_context(self.addresses.listener(wiring.module(service), env))
                sock = kept.dup()
            else:
                sock = listening_socket()
            served = _serve_in_loop(service, env, self.apps, sock)
            yield await stack.enter_async_context(served)

    def reset(self) -> None:
        self.worker.reset()

    def close(self) -> None:
        self.live.close()
        self.addresses.clear()


class Addresses(IdlePool["_Address"]):
    """The addresses of the services a worker serves afresh for each test (no reset
    hook), by module and settings: the next instance of those settings gets the same
    address. A client of a service that calls one (apex.agents calls apex.data) has its
    URL in its settings: with a new port each test, the caller's settings were new each
    test, so `apps.AppPool` never reused its app (each test made one and set up its
    first requests) and kept up to MAX_SETTINGS apps no later test could use.
    Between instances an address refuses connections: it is held by a socket that is
    bound but not listening. A listening one nobody accepted on held a caller that
    outlived the instance in its backlog: the payments fake delivering a webhook of the
    test before to apex.billing's address waited there until the next test's reset gave
    up on it (5-10 s). `start` and `cold_start` never use these."""

    def __init__(self) -> None:
        super().__init__(discard=lambda address: address.close())

    @contextlib.contextmanager
    def listener(self, module_name: str, env: Mapping[str, str]) -> Iterator[socket.socket]:
        """A listening socket on the address of `module_name` with `env`, for this block
        alone; the address refuses connections again after it."""
        with self.take(module_name, env, _Address) as address, address.listening() as sock:
            yield sock


class _Address:
    """A loopback address kept by a socket bound to it, listening only while served."""

    def __init__(self) -> None:
        self._sock = bound_socket()

    @contextlib.contextmanager
    def listening(self) -> Iterator[socket.socket]:
        """The address's socket, listening, for this block alone."""
        sock = self._sock
        try:
            sock.listen(1024)
        except OSError:  # another socket listens on the port: a new address
            sock.close()
            sock = self._sock = bound_socket()
            sock.listen(1024)
        try:
            yield sock
        finally:
            # Closed (after the instance closed its duplicates), the listener resets the
            # connections waiting in its backlog; a new socket keeps the port, unlistening.
            port = sock.getsockname()[1]
            sock.close()
            try:
                self._sock = bound_socket(port=port)
            except OSError:  # taken meanwhile: the next instance gets a new address
                self._sock = bound_socket()

    def close(self) -> None:
        self._sock.close()


@asynccontextmanager
async def _serve_in_loop(
    service: str, env: dict[str, str], apps: AppPool, sock: socket.socket
) -> AsyncIterator[RunningService]:
    """Serve `service` in the running event loop on the listening `sock` (loopback),
    closed when the instance stops.

    An ASGI service (`create_app(settings)`) runs under uvicorn; a service with its own
    server (`create_server(settings)`, the gateway) serves the socket itself
    (`serving(sock=...)`, `shutdown()`).
    """
    name = wiring.module(service)
    module = importlib.import_module(name)
    host, port = sock.getsockname()[:2]
    url = wiring.service_url(service, f"http://{host}:{port}")
    try:
        if hasattr(module, "create_app"):
            with apps.app(name, env) as app:
                async with serving_asgi(app, sock, name) as stop:
                    yield RunningService(url, Level.L2, stop)
        else:
            own = module.create_server(module.load_settings(env))
            async with own.serving(sock=sock):
                yield RunningService(url, Level.L2, own.shutdown)
    finally:
        sock.close()
