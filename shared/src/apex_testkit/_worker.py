"""One pytest process's share of the run: its namespaces, made on first use, reset per test."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest

from apex_testkit._level import OWN_PLATFORM, Level, require_level
from apex_testkit._provisioning import (
    SERVERS,
    SERVICES,
    Server,
    clickhouse,
    obtain,
    postgres,
    redis,
)
from apex_testkit._provisioning import postgres_replica as pg_replicas
from apex_testkit._provisioning import redis_replica as redis_replicas
from apex_testkit._provisioning._chain import (
    ServiceUnavailable,
    check_server,
    down_marker,
    is_timeout,
    known_down,
)
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
        self._redis_nodes: tuple[redis.RedisNamespace, ...] | None = None
        self._redis_replica: redis_replicas.RedisReplica | None = None
        self._postgres: str | None = None
        self._postgres_replica: pg_replicas.PostgresReplica | None = None
        self._clones: postgres.SpareClones | None = None
        self._clickhouse: str | None = None
        self._fakes: dict[str, FakeClient] = {}
        # (the server it needs, or None for a fake; the reset)
        self._resets: list[tuple[str | None, Callable[[], object]]] = []
        self._down_marker = down_marker(run)
        self._closers: list[Callable[[], None]] = []

    def server(self, service: str) -> Server:
        """The run's server of `service` (started by whichever process asks first); a
        replica or node by the provider of the server it is made from."""
        if service in SERVICES:
            return obtain(self.run, SERVICES[service], self.settings.chain(service))
        made_from = self.server(SERVERS[service].follows)
        return obtain(self.run, SERVERS[service], (made_from.provider,))

    @contextlib.contextmanager
    def guard(self, service: str) -> Iterator[None]:
        """Around the kit's own work on the run's server of `service`: when that server
        is known to have died or stopped answering, fail at once with one line that says
        so; when the work fails, find out whether that is why (ServerDown) or not (the
        error as it is)."""
        self._check_known(service)
        try:
            yield
        except ServiceUnavailable:
            raise
        except Exception as exc:
            self._explain_failure(service, exc)
            raise

    def _check_known(self, service: str) -> None:
        if os.path.exists(self._down_marker):
            down = known_down(self.run, service)
            if down is not None:
                raise down

    def _explain_failure(self, service: str, exc: Exception) -> None:
        """Raise ServerDown when `exc` came from the server dying or freezing."""
        down = check_server(self.run, SERVERS[service], timed_out=is_timeout(exc))
        if down is not None:
            raise down from None

    def redis_namespace(self) -> redis.RedisNamespace:
        if self._redis is None:
            with self.guard("redis"):
                namespace = redis.namespace(self.run, self.server("redis"), self.slot)
                namespace.reset()
            self._redis = namespace
            self._resets.append(("redis", namespace.reset))
            self._closers.append(namespace.close)
        return self._redis

    def redis_nodes(self) -> tuple[redis.RedisNamespace, ...]:
        """This worker's namespace on each of the run's extra Redis servers."""
        if self._redis_nodes is None:
            namespaces = []
            for service in redis_replicas.NODE_SERVICES:
                with self.guard(service.name):
                    namespace = redis.namespace(self.run, self.server(service.name), self.slot)
                    namespace.reset()
                namespaces.append(namespace)
                self._resets.append((service.name, namespace.reset))
                self._closers.append(namespace.close)
            self._redis_nodes = tuple(namespaces)
        return self._redis_nodes

    def redis_replica(self) -> redis_replicas.RedisReplica:
        """This worker's database on the run's Redis replica (and on its master). Before
        each test the replica has processed the reset: it shows what the master shows."""
        if self._redis_replica is None:
            namespace = self.redis_namespace()
            with self.guard("redis-replica"):
                replica = redis_replicas.worker_replica(self.server("redis-replica"), namespace)
                replica.wait_synced()
            self._redis_replica = replica
            synced = redis_replicas.Synced(replica)
            self._resets.append(("redis-replica", synced))
            self._closers.append(synced.close)
        return self._redis_replica

    def redis_pair(self) -> redis_replicas.RedisPair:
        """A Redis master and replica of the caller's own (the caller closes them), from
        the binary of the run's Redis."""
        with self.guard("redis"):
            server = self.server("redis")
        return redis_replicas.start_pair(
            self.run, server, f"redis-pair-w{self.slot}-{secrets.token_hex(3)}"
        )

    def postgres_database(self) -> str:
        """DSN of this worker's database: a clone of the run's migrated template."""
        if self._postgres is None:
            with self.guard("postgres"):
                server = self.server("postgres")
                dsn = postgres.worker_database(self.run, server, self.slot, self._migrate)
            self._postgres = dsn
            reset = postgres.DatabaseReset(dsn)
            self._resets.append(("postgres", reset))
            self._closers.append(reset.close)
        return self._postgres

    def migrated_clone(self) -> tuple[str, str]:
        """(name, DSN) of a new clone of the run's migrated template, the caller's to drop;
        made ahead while the test before ran (`postgres.SpareClones`)."""
        if self._clones is None:
            with self.guard("postgres"):
                server = self.server("postgres")
            prefix = f"{self.run.name}_e{self.slot}"
            self._clones = postgres.SpareClones(self.run, server, prefix, self._migrate)
            self._closers.append(self._clones.close)
        with self.guard("postgres"):
            return self._clones.take()

    def postgres_replica(self) -> pg_replicas.PostgresReplica:
        """This worker's database on the run's read replica (and on the primary). Before
        each test the replica has replayed the reset: it shows what the primary shows."""
        if self._postgres_replica is None:
            dsn = self.postgres_database()
            with self.guard("postgres-replica"):
                server = self.server("postgres-replica")
                replica = pg_replicas.worker_replica(server, dsn)
                replica.wait_caught_up()
            self._postgres_replica = replica
            caught_up = pg_replicas.CaughtUp(replica)
            self._resets.append(("postgres-replica", caught_up))
            self._closers.append(caught_up.close)
        return self._postgres_replica

    def postgres_pair(self) -> pg_replicas.PostgresPair:
        """A primary and replica of the caller's own (the caller closes it), made with the
        binaries of the run's PostgreSQL."""
        with self.guard("postgres"):
            server = self.server("postgres")
        name = f"pg-pair-w{self.slot}-{secrets.token_hex(3)}"
        return pg_replicas.start_pair(self.run, server, name)

    def clickhouse_database(self) -> str:
        if self._clickhouse is None:
            with self.guard("clickhouse"):
                server = self.server("clickhouse")
                url = clickhouse.worker_database(self.run, server, self.slot)
            self._clickhouse = url
            self._resets.append(("clickhouse", clickhouse.DatabaseReset(url)))
        return self._clickhouse

    def fake(self, name: str) -> FakeClient:
        """This worker's fake third party `name` (oidc, saml, smtp, sms, llm, otel), started
        on first use: in a thread at L2, as a process of the run at L3; reset with the rest."""
        if name not in self._fakes:
            # The fakes stand in for third parties of a platform that is ours (L2/L3).
            require_level(self.settings.level, OWN_PLATFORM, f"the {name} fake")
            from apex_testkit import _fakes  # noqa: PLC0415 - servers and XML, on demand

            client = _fakes.start(self.run, name, process=self.settings.level is Level.L3)
            self._fakes[name] = client
            # Reset before the servers: a fake may still be acting on the platform (a
            # webhook under way to a service that stores what it is told), which must be
            # over before the servers are wiped, or it lands in the next test's state.
            self._resets.insert(0, (None, client.reset))
            self._closers.append(client.close)
        return self._fakes[name]

    def reset(self) -> None:
        """Bring every namespace this worker made back to its initial state.

        As `guard`, inlined: before each test it costs one stat, whatever the servers.
        """
        if os.path.exists(self._down_marker):
            for service, _ in self._resets:
                if service is not None:
                    self._check_known(service)
        for service, reset in self._resets:
            try:
                reset()
            except Exception as exc:
                if service is not None:
                    self._explain_failure(service, exc)
                raise

    def close(self) -> None:
        """Release what this worker made, all at once: each closer mostly waits (a fake's
        server notices its stop within uvicorn's 0.1 s tick, then shuts down: 0.18 s each,
        0.7 s for four one after the other at the end of every worker)."""
        if not self._closers:
            return
        with ThreadPoolExecutor(len(self._closers), thread_name_prefix="apex-close") as pool:
            closing = [pool.submit(closer) for closer in self._closers]
        for done in closing:
            done.result()  # the first failure, once every closer has run
