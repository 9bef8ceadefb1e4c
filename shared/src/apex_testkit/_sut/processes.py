"""The system under test, wired by level: a test asks for a client, the level decides
what is behind it.

- L2: the service's ASGI app, imported and started in the test's own event loop.
- L3: the service as a separate process (`python -m apex.<service> --fd N`) on a socket.
- L4: the deployment a --target file names.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import importlib
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import cast

import httpx
from asgi_lifespan import LifespanManager

from apex_testkit import _loop
from apex_testkit._faults import FaultProxy
from apex_testkit._processes import ProcessRef, listening_socket, log_tail, spawn, wait_healthy
from apex_testkit._run import Run, record_process
from apex_testkit._settings import Level
from apex_testkit._target import Target
from apex_testkit._waiting import eventually
from apex_testkit._worker import Worker

# What each platform service reads from which server (its APEX_* settings).
SERVICE_NEEDS: dict[str, tuple[str, ...]] = {
    "auth": ("postgres", "redis"),
    "gateway": ("postgres", "redis"),
}
# Services a service calls, and the variable that tells it where: started first.
SERVICE_DEPENDS: dict[str, dict[str, str]] = {"gateway": {"auth": "APEX_AUTH_URL"}}
# Services whose clients speak WebSocket: their URLs are ws:// ones.
WEBSOCKET_SERVICES = frozenset({"gateway"})
# The third parties each service talks to; at L2/L3 the worker's fakes stand in for them.
SERVICE_FAKES: dict[str, tuple[str, ...]] = {"auth": ("oidc", "saml", "smtp", "sms")}
# The setting that names each dependency an L3 instance can reach through a FaultProxy.
PROXIED_SETTINGS: dict[str, str] = {
    "redis": "APEX_REDIS_URL",
    "postgres": "APEX_DATABASE_URL",
    "clickhouse": "APEX_CLICKHOUSE_URL",
    "idp": "APEX_IDP_ISSUER",
    "saml": "APEX_SAML_IDP_METADATA_URL",
    "smtp": "APEX_SMTP_URL",
    "sms": "APEX_SMS_BASE_URL",
}


def _scheme(service: str, http_url: str) -> str:
    return http_url.replace("http", "ws", 1) if service in WEBSOCKET_SERVICES else http_url


def migrate(dsn: str) -> None:
    """Bring an empty database to the platform's newest schema (the template's init)."""
    from apex.data.migrations import migrate as apply  # noqa: PLC0415 - the SUT, on demand

    _loop.run(apply(dsn))


def run_secrets(run: Run) -> dict[str, str]:
    """Signing key and admin token shared by every service instance of this run."""
    with run.lock("secrets"):
        stored = run.read("secrets")
        if stored is None:
            from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
            from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415

            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode()
            stored = {"jwt_private_key": pem, "admin_token": secrets.token_urlsafe(24)}
            run.store("secrets", stored)
    return {str(k): str(v) for k, v in stored.items()}


def service_env(worker: Worker, service: str) -> dict[str, str]:
    """The APEX_* settings that point one service at this worker's namespaces."""
    shared = run_secrets(worker.run)
    env = {
        "APEX_JWT_PRIVATE_KEY": shared["jwt_private_key"],
        "APEX_ADMIN_TOKEN": shared["admin_token"],
        "APEX_LOG_LEVEL": "WARNING",
    }
    needs = SERVICE_NEEDS.get(service, ())
    if "postgres" in needs:
        env["APEX_DATABASE_URL"] = worker.postgres_database()
    if "redis" in needs:
        namespace = worker.redis_namespace()
        env["APEX_REDIS_URL"] = namespace.url
        env["APEX_REDIS_PREFIX"] = namespace.prefix
    if "clickhouse" in needs:
        env["APEX_CLICKHOUSE_URL"] = worker.clickhouse_database()
    if worker.settings.level in (Level.L2, Level.L3):
        for fake in SERVICE_FAKES.get(service, ()):
            env |= fake_env(worker, fake)
    return env


def fake_env(worker: Worker, fake: str) -> dict[str, str]:
    """The APEX_* settings that point a service at this worker's fake `fake`."""
    from apex_testkit._fakes.oidc import FakeIdp  # noqa: PLC0415 - servers, on demand
    from apex_testkit._fakes.saml import FakeSamlIdp  # noqa: PLC0415
    from apex_testkit._fakes.sms import FakeSms  # noqa: PLC0415
    from apex_testkit._fakes.smtp import Mailbox  # noqa: PLC0415

    client = worker.fake(fake)
    if fake == "oidc":
        idp = cast(FakeIdp, client)
        return {
            "APEX_IDP_ISSUER": idp.issuer,
            "APEX_IDP_CLIENT_ID": idp.client_id,
            "APEX_IDP_CLIENT_SECRET": idp.client_secret,
        }
    if fake == "saml":
        return {"APEX_SAML_IDP_METADATA_URL": cast(FakeSamlIdp, client).metadata_url}
    if fake == "smtp":
        return {"APEX_SMTP_URL": cast(Mailbox, client).smtp_url}
    sms = cast(FakeSms, client)
    return {
        "APEX_SMS_BASE_URL": sms.base_url,
        "APEX_SMS_ACCOUNT_SID": sms.account_sid,
        "APEX_SMS_AUTH_TOKEN": sms.auth_token,
        "APEX_SMS_FROM": sms.from_number,
    }


@dataclass
class RunningService:
    """A service instance a test started for itself (`Platform.start`)."""

    url: str
    _stop: Callable[[], Awaitable[None]]
    _kill: Callable[[], Awaitable[None]] | None = None

    async def stop(self) -> None:
        """Graceful: SIGTERM at L3 (the service drains and exits), its own shutdown at L2."""
        await self._stop()

    async def kill(self) -> None:
        """A crash, with no goodbye to clients: L3 only (a process to kill)."""
        if self._kill is None:
            raise RuntimeError("kill() needs a service process: mark the test L3 only")
        await self._kill()


class Platform(abc.ABC):
    """The platform as the tests see it, whatever the level."""

    level: Level

    @property
    @abc.abstractmethod
    def admin_token(self) -> str:
        """Bearer token of the admin API, with which tests create their own users."""

    @abc.abstractmethod
    def client(
        self, service: str, *, instance: int = 0, **settings: str
    ) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        """An HTTP client of instance `instance` of `service`.

        Instances share the worker's servers, so a test can check what one instance sees
        of another's work; `settings` override the service's APEX_* env (L2/L3 only).
        """

    @abc.abstractmethod
    def serve(
        self, service: str, *, instance: int = 0, **settings: str
    ) -> AbstractAsyncContextManager[str]:
        """The base URL of `service` on a real socket (http:// or ws://), for clients that
        need a network peer (WebSocket clients, other services); with its dependencies.

        L2 serves it (and them) on loopback ports inside the test's event loop, L3 gives
        the worker's process, L4 the target's URL.
        """

    @abc.abstractmethod
    def start(self, service: str, **settings: str) -> AbstractAsyncContextManager[RunningService]:
        """A fresh instance of `service` for this test alone (with these settings), that the
        test may stop or, at L3, kill; stopped at the end of the block. L2/L3 only."""

    def instance(
        self, service: str, instance: int = 0, *, via_proxy: Sequence[str] = (), **settings: str
    ) -> ServiceProcess:
        """Process number `instance` of `service` (L3 only: a process to stop or kill)."""
        raise RuntimeError(f"{service} runs as a process only at L3: mark the test L3 only")

    def proxy(self, service: str, instance: int, name: str) -> FaultProxy:
        """The fault proxy between an instance and its dependency `name` (L3 only)."""
        raise RuntimeError("fault proxies sit between processes: mark the test L3 only")

    def reset(self) -> None:  # noqa: B027 - a no-op is the right default (L4)
        """Empty the platform's state before a test (a no-op against a deployment)."""

    def close(self) -> None:  # noqa: B027 - a no-op is the right default (L2, L4)
        """Stop what this platform started."""


class InProcessPlatform(Platform):
    """L2: each client gets a fresh app instance in the test's event loop."""

    level = Level.L2

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    @property
    def admin_token(self) -> str:
        return run_secrets(self.worker.run)["admin_token"]

    @asynccontextmanager
    async def client(
        self, service: str, *, instance: int = 0, **settings: str
    ) -> AsyncIterator[httpx.AsyncClient]:
        # Every client is an app instance of its own, whatever `instance` says.
        env = {**service_env(self.worker, service), **settings}
        module = importlib.import_module(f"apex.{service}")
        app = module.create_app(module.load_settings(env))
        async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            base = f"http://{service}.apex.test"
            async with httpx.AsyncClient(transport=transport, base_url=base) as client:
                yield client

    @asynccontextmanager
    async def serve(
        self, service: str, *, instance: int = 0, **settings: str
    ) -> AsyncIterator[str]:
        # Every L2 instance is a fresh one in the test's loop.
        async with self.start(service, **settings) as running:
            yield running.url

    @asynccontextmanager
    async def start(self, service: str, **settings: str) -> AsyncIterator[RunningService]:
        async with contextlib.AsyncExitStack() as stack:
            env = service_env(self.worker, service)
            for dependency, variable in SERVICE_DEPENDS.get(service, {}).items():
                if variable not in settings:  # a test may point it elsewhere (a proxy)
                    env[variable] = await stack.enter_async_context(self.serve(dependency))
            yield await stack.enter_async_context(_serve_in_loop(service, {**env, **settings}))

    def reset(self) -> None:
        self.worker.reset()


@asynccontextmanager
async def _serve_in_loop(service: str, env: dict[str, str]) -> AsyncIterator[RunningService]:
    """Serve `apex.<service>` in the running event loop on an ephemeral loopback port.

    An ASGI service (`create_app(Settings)`) runs under uvicorn; the gateway, which has
    its own server, serves the socket itself (`create_gateway(GatewaySettings)`, then
    `serving(sock=...)`).
    """
    module = importlib.import_module(f"apex.{service}")
    sock = listening_socket()
    host, port = sock.getsockname()[:2]
    url = _scheme(service, f"http://{host}:{port}")
    try:
        if hasattr(module, "create_app"):
            import uvicorn  # noqa: PLC0415 - only L2 serving needs it

            app = module.create_app(module.load_settings(env))
            config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False)
            server = uvicorn.Server(config)
            task = asyncio.create_task(server.serve(sockets=[sock]))

            async def started() -> bool:
                if task.done():  # it stopped during start-up: say why
                    task.result()
                    raise RuntimeError(f"apex.{service} exited during start-up")
                return bool(server.started)

            async def stop() -> None:
                server.should_exit = True
                await task

            try:
                await eventually(started, timeout=30, message=f"apex.{service} serving")
                yield RunningService(url, stop)
            finally:
                await stop()
        else:
            gateway = module.create_server(module.load_settings(env))
            async with gateway.serving(sock=sock):
                yield RunningService(url, gateway.shutdown)
    finally:
        sock.close()


class ServiceProcess:
    """One instance of a platform service as an OS process on a loopback socket."""

    def __init__(self, run: Run, service: str, env: Mapping[str, str], name: str) -> None:
        self.run, self.service, self.env, self.name = run, service, dict(env), name
        self.log = run.path / f"{name}.log"
        self.url = ""
        self._ref: ProcessRef | None = None

    def start(self, timeout: float = 60.0) -> str:
        """Start it and wait until /healthz answers 200; return its base URL."""
        sock = listening_socket()
        host, port = sock.getsockname()[:2]
        argv = [sys.executable, "-m", f"apex.{self.service}", "--fd", str(sock.fileno())]
        env = {**os.environ, **self.env}
        process = spawn(argv, log=self.log, env=env, pass_fds=[sock.fileno()], die_with_parent=True)
        sock.close()
        self._ref = record_process(self.run, self.name, process.pid, grace=10.0)
        self.url = f"http://{host}:{port}"
        outcome = wait_healthy(process, f"{self.url}/healthz", timeout=timeout)
        if outcome != "ready":
            self.stop()
            what = f"exited with code {process.returncode}" if outcome else "never became healthy"
            raise RuntimeError(f"apex.{self.service} ({self.name}) {what}:\n{log_tail(self.log)}")
        return self.url

    def stop(self) -> None:
        """Graceful: SIGTERM (the service drains and exits), SIGKILL after 10 s."""
        if self._ref is not None:
            self._ref.stop(grace=10.0)
            self.run.forget(self.name)
            self._ref = None

    def kill(self) -> None:
        """A crash: SIGKILL, no goodbye to clients (for failover tests)."""
        if self._ref is not None:
            self._ref.stop(grace=0.0, sig=signal.SIGKILL)
            self.run.forget(self.name)
            self._ref = None


class ProcessPlatform(Platform):
    """L3: each service runs as its own process, started on first use, one per worker."""

    level = Level.L3

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._instances: dict[
            tuple[str, int, tuple[tuple[str, str], ...], tuple[str, ...]], ServiceProcess
        ] = {}
        self._proxies: dict[tuple[str, int, str], FaultProxy] = {}
        self._all_proxies: list[FaultProxy] = []

    @property
    def admin_token(self) -> str:
        return run_secrets(self.worker.run)["admin_token"]

    def instance(
        self, service: str, instance: int = 0, *, via_proxy: Sequence[str] = (), **settings: str
    ) -> ServiceProcess:
        """Process number `instance` of `service` with these settings (started if need be).

        `via_proxy` names dependencies ("redis", "postgres", "idp", "saml", "smtp", "sms")
        this instance reaches through a FaultProxy of its own: `proxy(service, N, name)`.
        """
        key = (service, instance, tuple(sorted(settings.items())), tuple(via_proxy))
        if key not in self._instances:
            env = {**service_env(self.worker, service), **settings}
            for dependency in via_proxy:
                variable = PROXIED_SETTINGS.get(dependency)
                if variable is None or not env.get(variable):
                    raise ValueError(
                        f"{service} has no {dependency!r} to proxy; "
                        f"known: {', '.join(PROXIED_SETTINGS)}"
                    )
                proxy = FaultProxy(env[variable], name=f"{service}-{instance}-{dependency}")
                self._all_proxies.append(proxy.start())
                self._proxies[(service, instance, dependency)] = proxy
                env[variable] = proxy.url_for(env[variable])
            name = f"{service}-w{self.worker.slot}-{len(self._instances)}"
            env = self._with_dependencies(service, env)
            process = ServiceProcess(self.worker.run, service, env, name)
            process.start()
            self._instances[key] = process
        return self._instances[key]

    @asynccontextmanager
    async def client(
        self, service: str, *, instance: int = 0, **settings: str
    ) -> AsyncIterator[httpx.AsyncClient]:
        url = self.instance(service, instance, **settings).url
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield client

    def _with_dependencies(self, service: str, env: dict[str, str]) -> dict[str, str]:
        """`env` plus where the services it calls are (unless a test set it: a proxy)."""
        for dependency, variable in SERVICE_DEPENDS.get(service, {}).items():
            env.setdefault(variable, self.instance(dependency).url)
        return env

    @asynccontextmanager
    async def serve(
        self, service: str, *, instance: int = 0, **settings: str
    ) -> AsyncIterator[str]:
        yield _scheme(service, self.instance(service, instance, **settings).url)

    @asynccontextmanager
    async def start(self, service: str, **settings: str) -> AsyncIterator[RunningService]:
        env = self._with_dependencies(service, {**service_env(self.worker, service), **settings})
        name = f"{service}-w{self.worker.slot}-own-{secrets.token_hex(4)}"
        process = ServiceProcess(self.worker.run, service, env, name)
        await asyncio.to_thread(process.start)

        async def stop() -> None:
            await asyncio.to_thread(process.stop)

        async def kill() -> None:
            await asyncio.to_thread(process.kill)

        try:
            yield RunningService(_scheme(service, process.url), stop, kill)
        finally:
            await stop()

    def proxy(self, service: str, instance: int, name: str) -> FaultProxy:
        """The fault proxy between instance `instance` of `service` and its dependency
        `name` (the instance was started with `via_proxy=(name, ...)`)."""
        try:
            return self._proxies[(service, instance, name)]
        except KeyError:
            raise LookupError(
                f"no proxy to {name} for {service} instance {instance}: start it with "
                f"platform.instance({service!r}, {instance}, via_proxy=({name!r},))"
            ) from None

    def reset(self) -> None:
        """The worker's namespaces and fakes, and no fault left in any proxy."""
        self.worker.reset()
        for proxy in self._all_proxies:
            proxy.clear()
            proxy.reset_stats()

    def close(self) -> None:
        # Dependents first: a gateway stops before the auth service it calls.
        for process in reversed(list(self._instances.values())):
            process.stop()
        self._instances.clear()
        for proxy in self._all_proxies:
            proxy.stop()
        self._all_proxies.clear()
        self._proxies.clear()


class DeployedPlatform(Platform):
    """L4: a running deployment; nothing is started, reset or stopped."""

    level = Level.L4

    def __init__(self, target: Target) -> None:
        self.target = target

    @property
    def admin_token(self) -> str:
        return self.target.require_admin_token()

    @asynccontextmanager
    async def client(
        self, service: str, *, instance: int = 0, **settings: str
    ) -> AsyncIterator[httpx.AsyncClient]:
        # A deployment is one URL per service (its load balancer picks the instance).
        if settings:
            raise RuntimeError(
                f"a deployed {service} cannot be reconfigured ({', '.join(settings)}): "
                "mark the test for L2/L3 only"
            )
        async with httpx.AsyncClient(base_url=self.target.url(service), timeout=30) as client:
            yield client

    @asynccontextmanager
    async def serve(
        self, service: str, *, instance: int = 0, **settings: str
    ) -> AsyncIterator[str]:
        if settings:
            raise RuntimeError(f"a deployed {service} cannot be reconfigured: mark the test L2/L3")
        yield self.target.url(service)

    def start(self, service: str, **settings: str) -> AbstractAsyncContextManager[RunningService]:
        raise RuntimeError(f"a deployed {service} is not ours to start: mark the test L2/L3")
