"""One pytest process's share of the run: its namespaces, made on first use, reset per test."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from apex_testkit._level import OWN_PLATFORM, Level, require_level
from apex_testkit._provisioning import SERVICES, Server, clickhouse, obtain, postgres, redis
from apex_testkit._run import Run
from apex_testkit._settings import KitSettings

if TYPE_CHECKING:
    from apex_testkit._fakes import FakeClient


def worker_slot(config: pytest.Config) -> int:
    """0 for a single process or xdist worker gw0, N for gwN."""
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    worker = str(workerinput["workerid"]) if workerinput else ""
    return int(worker[2:]) if worker.startswith("gw") else 0


class Worker:
    """Namespaces of the run's servers that belong to this process alone.

    Nothing is started until a test asks for it; what was made is reset before each test
    that uses the platform (`reset`) and released at the end (`close`).
    """

    def __init__(
        self, run: Run, settings: KitSettings, migrate: Callable[[str], None], slot: int
    ) -> None:
        self.run = run
        self.settings = settings
        self.slot = slot
        self._migrate = migrate
        self._redis: redis.RedisNamespace | None = None
        self._postgres: str | None = None
        self._clickhouse: str | None = None
        self._fakes: dict[str, FakeClient] = {}
        self._resets: list[Callable[[], object]] = []
        self._closers: list[Callable[[], None]] = []

    def server(self, service: str) -> Server:
        """The run's server of `service` (started by whichever process asks first)."""
        return obtain(self.run, SERVICES[service], self.settings.chain(service))

    def redis_namespace(self) -> redis.RedisNamespace:
        if self._redis is None:
            self._redis = redis.namespace(self.run, self.server("redis"), self.slot)
            self._redis.reset()
            self._resets.append(self._redis.reset)
        return self._redis

    def postgres_database(self) -> str:
        """DSN of this worker's database: a clone of the run's migrated template."""
        if self._postgres is None:
            server = self.server("postgres")
            self._postgres = postgres.worker_database(self.run, server, self.slot, self._migrate)
            reset = postgres.DatabaseReset(self._postgres)
            self._resets.append(reset)
            self._closers.append(reset.close)
        return self._postgres

    def clickhouse_database(self) -> str:
        if self._clickhouse is None:
            server = self.server("clickhouse")
            self._clickhouse = clickhouse.worker_database(self.run, server, self.slot)
            self._resets.append(clickhouse.DatabaseReset(self._clickhouse))
        return self._clickhouse

    def fake(self, name: str) -> FakeClient:
        """This worker's fake third party `name` (oidc, saml, smtp, sms), started on first
        use: in a thread at L2, as a process of the run at L3; reset with the rest."""
        if name not in self._fakes:
            # The fakes stand in for third parties of a platform that is ours (L2/L3).
            require_level(self.settings.level, OWN_PLATFORM, f"the {name} fake")
            from apex_testkit import _fakes  # noqa: PLC0415 - servers and XML, on demand

            client = _fakes.start(self.run, name, process=self.settings.level is Level.L3)
            self._fakes[name] = client
            self._resets.append(client.reset)
            self._closers.append(client.close)
        return self._fakes[name]

    def reset(self) -> None:
        """Bring every namespace this worker made back to its initial state."""
        for reset in self._resets:
            reset()

    def close(self) -> None:
        for closer in self._closers:
            closer()
