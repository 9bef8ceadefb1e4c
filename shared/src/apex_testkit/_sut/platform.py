"""The platform as the tests see it, whatever the level: the `Platform` every level
implements, the `RunningService` a test starts for itself and the `ProxiedService` it
reaches behind a fault proxy.

Each public method of `Platform` checks the level once, here, then calls the level's
hook (`_client`, `_serve`, `_start`, `_instance`, `_proxy`, `_proxied`); a level module
implements only the hooks its level has.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import httpx

from apex_testkit._level import OWN_PLATFORM, PROCESSES, Level, require_level

if TYPE_CHECKING:
    from apex_testkit._faults import FaultProxy
    from apex_testkit._sut.processes import ServiceProcess


@dataclass
class RunningService:
    """A service instance a test started for itself (`Platform.start`)."""

    url: str
    level: Level
    _stop: Callable[[], Awaitable[None]]
    _kill: Callable[[], Awaitable[None]] | None = None

    async def stop(self) -> None:
        """Graceful: SIGTERM at L3 (the service drains and exits), its own shutdown at L2."""
        await self._stop()

    async def kill(self) -> None:
        """A crash, with no goodbye to clients: L3 only (a process to kill)."""
        require_level(self.level, PROCESSES, "kill() of a service process")
        assert self._kill is not None  # noqa: S101 - every L3 instance has one
        await self._kill()


@dataclass
class ProxiedService:
    """An instance (L3) whose every connection to one dependency goes through `proxy`
    (`Platform.proxied`): its `client`, the `proxy` and the `process` itself."""

    client: httpx.AsyncClient
    proxy: FaultProxy
    process: ServiceProcess


class Platform(abc.ABC):
    """The platform as the tests see it, whatever the level."""

    level: ClassVar[Level]

    @property
    @abc.abstractmethod
    def admin_token(self) -> str:
        """Bearer token of the admin API, with which tests create their own users."""

    def require(self, *levels: Level, what: str) -> None:
        """Fail (WrongLevel) unless this run's level is one of `levels`: for a fixture
        that offers something only some levels have (`platform.require(Level.L3,
        what="Redis faults")`)."""
        require_level(self.level, levels, what)

    def client(
        self, service: str, *, instance: int = 0, **settings: str
    ) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        """An HTTP client of instance `instance` of `service`.

        Instances share the worker's servers, so a test can check what one instance sees
        of another's work; `settings` override the service's APEX_* env (L2/L3 only).
        """
        self._reconfigurable(service, settings)
        return self._client(service, instance, settings)

    def serve(
        self, service: str, *, instance: int = 0, **settings: str
    ) -> AbstractAsyncContextManager[str]:
        """The base URL of `service` on a real socket (http:// or ws://), for clients that
        need a network peer (WebSocket clients, other services); with the services it
        calls. L2 gives the worker's running server of these settings and number when the
        service (and what it calls) can reset its memory (`reset_memory`), kept between
        tests in the apps' loop, else serves it (and them) on loopback ports inside the
        test's event loop; L3 gives the worker's process, L4 the target's URL.
        """
        self._reconfigurable(service, settings)
        return self._serve(service, instance, settings)

    def start(self, service: str, **settings: str) -> AbstractAsyncContextManager[RunningService]:
        """A fresh instance of `service` for this test alone (with these settings), that the
        test may stop or, at L3, kill; stopped at the end of the block. L2/L3 only.

        At L3 the process may be a warm spare: an interpreter that had already imported the
        service when it got these settings (the service's own start, its lifespan, is
        still fresh). `cold_start` when the start itself is under test."""
        self.require(*OWN_PLATFORM, what=f"platform.start({service!r})")
        return self._start(service, settings, cold=False)

    def cold_start(
        self, service: str, **settings: str
    ) -> AbstractAsyncContextManager[RunningService]:
        """`start`, but at L3 a new interpreter from its first import (`python -m`, never a
        warm spare): for tests and benchmarks of a service's cold start. At L2 it is
        `start` (a new lifespan; there is no interpreter to start). L2/L3 only."""
        self.require(*OWN_PLATFORM, what=f"platform.cold_start({service!r})")
        return self._start(service, settings, cold=True)

    def instance(
        self, service: str, instance: int = 0, *, via_proxy: Sequence[str] = (), **settings: str
    ) -> ServiceProcess:
        """Process number `instance` of `service` with these settings (started if need be),
        to stop or kill; L3 only. `via_proxy` names dependencies (a server: "redis",
        "postgres", "clickhouse", or a third party of the service: "oidc", "smtp", ...) this
        instance reaches through a FaultProxy of its own: `proxy(service, N, name)`."""
        self.require(*PROCESSES, what=f"platform.instance({service!r}) (a service process)")
        return self._instance(service, instance, tuple(via_proxy), settings)

    def proxy(self, service: str, instance: int, name: str) -> FaultProxy:
        """The fault proxy between instance `instance` of `service` and its dependency
        `name` (the instance was started with `via_proxy=(name, ...)`); L3 only."""
        self.require(*PROCESSES, what="a fault proxy between processes")
        return self._proxy(service, instance, name)

    def proxied(
        self, service: str, instance: int, via: str, **settings: str
    ) -> AbstractAsyncContextManager[ProxiedService]:
        """Instance `instance` of `service` with a fault proxy to its dependency `via`
        (`instance(service, instance, via_proxy=(via,), **settings)` and its `proxy`), and a
        client of it; L3 only. The proxy is clear and the instance healthy when the block
        starts, the proxy cleared again when it ends; a failure in the block prints the
        tail of the instance's log. Instances are keyed by number and settings: give one
        number the same settings everywhere."""
        self.require(*PROCESSES, what=f"platform.proxied({service!r}) (a service process)")
        return self._proxied(service, instance, via, settings)

    def reset(self) -> None:  # noqa: B027 - a no-op is the right default (L4)
        """Empty the platform's state before a test (a no-op against a deployment)."""

    def close(self) -> None:  # noqa: B027 - a no-op is the right default (L4)
        """Stop what this platform started."""

    def _reconfigurable(self, service: str, settings: Mapping[str, str]) -> None:
        if settings:
            what = f"reconfiguring {service} ({', '.join(settings)})"
            self.require(*OWN_PLATFORM, what=what)

    # -- what each level implements (called after the level checks above) ----------------

    @abc.abstractmethod
    def _client(
        self, service: str, instance: int, settings: Mapping[str, str]
    ) -> AbstractAsyncContextManager[httpx.AsyncClient]: ...

    @abc.abstractmethod
    def _serve(
        self, service: str, instance: int, settings: Mapping[str, str]
    ) -> AbstractAsyncContextManager[str]: ...

    def _start(
        self, service: str, settings: Mapping[str, str], *, cold: bool
    ) -> AbstractAsyncContextManager[RunningService]:
        raise NotImplementedError  # levels without it never get here (start checks)

    def _instance(
        self, service: str, instance: int, via_proxy: tuple[str, ...], settings: Mapping[str, str]
    ) -> ServiceProcess:
        raise NotImplementedError

    def _proxy(self, service: str, instance: int, name: str) -> FaultProxy:
        raise NotImplementedError

    def _proxied(
        self, service: str, instance: int, via: str, settings: Mapping[str, str]
    ) -> AbstractAsyncContextManager[ProxiedService]:
        raise NotImplementedError
