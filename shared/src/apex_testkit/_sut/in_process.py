"""L2: the platform imported, in the test process.

A client gets an app instance of its own behind httpx's ASGI transport, its lifespan run
in the test's event loop; `serve` and `start` serve the service (and the services it
calls) on loopback sockets inside the test's own event loop, through the service
contract: `<module>.load_settings(env)`, then `create_app(settings)` (run under uvicorn)
or `create_server(settings)` (its own server). Apps are reused by later tests of the
worker with the same settings, each time with a fresh lifespan (`apps.AppPool`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import httpx
from asgi_lifespan import LifespanManager

from apex_testkit._level import Level
from apex_testkit._processes import listening_socket
from apex_testkit._sut import wiring
from apex_testkit._sut.apps import AppPool
from apex_testkit._sut.platform import Platform, RunningService
from apex_testkit._waiting import eventually
from apex_testkit._worker import Worker


class InProcessPlatform(Platform):
    """L2: each client and each served instance is a fresh app in the test's event loop."""

    level = Level.L2

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.apps = AppPool()

    @property
    def admin_token(self) -> str:
        return wiring.run_secrets(self.worker.run)["admin_token"]

    @asynccontextmanager
    async def _client(
        self, service: str, instance: int, settings: Mapping[str, str]
    ) -> AsyncIterator[httpx.AsyncClient]:
        # Every client is an app instance of its own, whatever `instance` says.
        async with contextlib.AsyncExitStack() as stack:
            env = {**wiring.service_env(self.worker, service), **settings}
            # The services it calls, served on loopback sockets (as `_start` does).
            for called, setting in wiring.calls(service).items():
                if setting not in settings:
                    env[setting] = await stack.enter_async_context(self._serve(called, 0, {}))
            with self.apps.app(wiring.module(service), env) as app:
                async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
                    transport = httpx.ASGITransport(app=manager.app)
                    base = f"http://{service}.apex.test"
                    async with httpx.AsyncClient(transport=transport, base_url=base) as client:
                        yield client

    @asynccontextmanager
    async def _serve(
        self, service: str, instance: int, settings: Mapping[str, str]
    ) -> AsyncIterator[str]:
        # Every L2 instance is a fresh one in the test's loop.
        async with self._start(service, settings) as running:
            yield running.url

    @asynccontextmanager
    async def _start(
        self, service: str, settings: Mapping[str, str]
    ) -> AsyncIterator[RunningService]:
        async with contextlib.AsyncExitStack() as stack:
            env = wiring.service_env(self.worker, service)
            for called, setting in wiring.calls(service).items():
                if setting not in settings:  # a test may point it elsewhere (a proxy)
                    env[setting] = await stack.enter_async_context(self._serve(called, 0, {}))
            served = _serve_in_loop(service, {**env, **settings}, self.apps)
            yield await stack.enter_async_context(served)

    def reset(self) -> None:
        self.worker.reset()


@asynccontextmanager
async def _serve_in_loop(
    service: str, env: dict[str, str], apps: AppPool
) -> AsyncIterator[RunningService]:
    """Serve `service` in the running event loop on an ephemeral loopback port.

    An ASGI service (`create_app(settings)`) runs under uvicorn; a service with its own
    server (`create_server(settings)`, the gateway) serves the socket itself
    (`serving(sock=...)`, `shutdown()`).
    """
    name = wiring.module(service)
    module = importlib.import_module(name)
    sock = listening_socket()
    host, port = sock.getsockname()[:2]
    url = wiring.service_url(service, f"http://{host}:{port}")
    try:
        if hasattr(module, "create_app"):
            import uvicorn  # noqa: PLC0415 - only L2 serving needs it

            with apps.app(name, env) as app:
                config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False)
                server = uvicorn.Server(config)
                task = asyncio.create_task(server.serve(sockets=[sock]))

                async def started() -> bool:
                    if task.done():  # it stopped during start-up: say why
                        task.result()
                        raise RuntimeError(f"{name} exited during start-up")
                    return bool(server.started)

                async def stop() -> None:
                    server.should_exit = True
                    await task

                try:
                    await eventually(started, timeout=30, message=f"{name} serving")
                    yield RunningService(url, Level.L2, stop)
                finally:
                    await stop()
        else:
            own = module.create_server(module.load_settings(env))
            async with own.serving(sock=sock):
                yield RunningService(url, Level.L2, own.shutdown)
    finally:
        sock.close()
