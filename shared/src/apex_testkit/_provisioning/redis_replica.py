"""Redis beyond the run's one server: several independent nodes and a replica of it, made
once per run by the first process that needs them (from the binary of the run's Redis),
with a namespace per worker as on the run's server; and a test's own master and replica
pair for failover.

The run's replica (REPLICAOF the run's Redis) is shared by every worker, each reading its
own logical database there: it is never promoted nor cut off. A test that promotes a
replica (REPLICAOF NO ONE) or cuts its link gets a pair of its own (`start_pair`), whose
replica follows its master through a FaultProxy, stopped at the end of the test.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import redis as redis_py

from apex_testkit._faults import parse_address
from apex_testkit._provisioning import _pairs, redis
from apex_testkit._provisioning._binaries import Started, version_of
from apex_testkit._provisioning._chain import (
    CONNECT_TIMEOUT,
    RESET_TIMEOUT,
    Failed,
    Server,
    Service,
    ServiceUnavailable,
    Unavailable,
    check_external,
)
from apex_testkit._run import Run
from apex_testkit._waiting import wait_for

NODES = 3  # independent Redis servers of the run beside its own (`redis_nodes`)
REPLICA_URL_ENV = "APEX_TEST_REDIS_REPLICA_URL"


def _info(url: str, client: redis_py.Redis | None = None) -> dict[str, str]:
    """INFO replication of the server at `url` (through `client` when given)."""
    if client is not None:
        return {k: str(v) for k, v in client.info("replication").items()}
    with redis_py.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT) as new:
        return _info(url, new)


def _linked(url: str) -> bool:
    """Whether the replica at `url` has synced with its master (link up)."""
    try:
        return _info(url).get("master_link_status") == "up"
    except redis_py.RedisError:
        return False


@dataclass(frozen=True)
class RedisReplica:
    """A Redis replica as a test sees it: `url` (a logical database of the replica,
    read-only until promoted), `primary_url` (the same database of its master), and
    `prefix` for keys, as in RedisNamespace. Offsets are bytes of the replication stream."""

    url: str
    primary_url: str
    prefix: str = ""

    def client(self) -> redis_py.Redis:
        """A new client of this database of the replica (keys still need `prefix`)."""
        return redis_py.Redis.from_url(self.url, decode_responses=True)

    def primary_offset(self) -> int:
        """How much its master has written to the replication stream so far."""
        return int(_info(self.primary_url)["master_repl_offset"])

    def offset(self) -> int:
        """How much of the master's stream the replica has processed."""
        return int(_info(self.url).get("slave_repl_offset", 0))

    def lag_bytes(self) -> int:
        """Bytes of the master's stream the replica has not processed yet."""
        return max(0, self.primary_offset() - self.offset())

    def wait_for_offset(self, offset: int, *, timeout: float = 10.0) -> int:
        """Wait until the replica has processed the master's stream up to `offset`."""

        wait_for(
            lambda: self.offset() >= offset,
            timeout=timeout,
            message=lambda: f"the replica processed {self.offset()} bytes, not {offset}",
        )
        return self.offset()

    def wait_synced(self, *, timeout: float = 10.0) -> int:
        """Wait until the replica has every write its master took before this call."""
        return self.wait_for_offset(self.primary_offset(), timeout=timeout)


@dataclass
class Synced:
    """`wait_synced` of a replica through two long-lived clients: a worker's per-test wait
    for the run's replica to process the reset costs no connects."""

    replica: RedisReplica
    timeout: float = RESET_TIMEOUT
    _clients: list[redis_py.Redis] = field(default_factory=list, repr=False)

    def __call__(self) -> None:
        """Return once the replica has processed every write its master took so far."""
        if not self._clients:
            self._clients = [
                redis_py.Redis.from_url(
                    url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=self.timeout
                )
                for url in (self.replica.primary_url, self.replica.url)
            ]
        master, replica = self._clients
        offset = int(_info("", master)["master_repl_offset"])
        wait_for(
            lambda: int(_info("", replica).get("slave_repl_offset", 0)) >= offset,
            timeout=self.timeout,
            message=f"the run's Redis replica processing its master's stream up to {offset}",
        )

    def close(self) -> None:
        """Close both clients."""
        for client in self._clients:
            client.close()
        self._clients = []


# --- the run's nodes and replica: servers of the run, obtained like the others ----------


def _primary(run: Run) -> Server:
    stored = run.read(f"server-{redis.SERVICE.name}")
    if not stored or "error" in stored:
        raise Unavailable("the run has no Redis server")
    return Server(**stored)


def _external(what: str) -> NoReturn:
    raise Failed(
        f"the run's Redis is not the kit's own: the kit starts {what} only from the "
        "binary of a Redis server it started",
        fix="Fix: --services redis=local (apt-get install -y redis-server)",
    )


def _node(index: int) -> Service:
    name = f"redis-node-{index}"

    def launch(run: Run) -> Server:
        primary = _primary(run)
        if "binary" not in primary.extra:
            _external("extra nodes")
        binary = str(primary.extra["binary"])
        started = redis.start_redis(run, name, binary)
        url = f"redis://127.0.0.1:{started.port}/0"
        version = version_of([binary, "--version"])
        return Server(name, primary.provider, url, version, extra=started.extra())

    return Service(
        name=name,
        title=f"Redis node {index}",
        url_env=redis.SERVICE.url_env,
        fixes=redis.SERVICE.fixes,
        providers=dict.fromkeys(("url", "local", "embedded", "docker"), launch),
        problem=redis.SERVICE.problem,
        follows=redis.SERVICE.name,
    )


NODE_SERVICES = tuple(_node(index) for index in range(1, NODES + 1))


def _replica(run: Run) -> Server:
    primary = _primary(run)
    if os.environ.get(REPLICA_URL_ENV, "").strip():
        raise Failed(
            f"{REPLICA_URL_ENV} is set, but the run's Redis is the kit's own "
            f"({primary.provider}): a replica of another server is no replica of it",
            fix=f"Fix: unset {REPLICA_URL_ENV}, or set {redis.SERVICE.url_env} to its master",
        )
    if "binary" not in primary.extra:
        _external("a replica")
    binary = str(primary.extra["binary"])
    host, port = parse_address(primary.url)
    args = ("--replicaof", host, str(port))
    started = redis.start_redis(run, "redis-replica", binary, args, ready=_linked)
    url = f"redis://127.0.0.1:{started.port}/0"
    version = version_of([binary, "--version"])
    return Server("redis-replica", primary.provider, url, version, extra=started.extra())


def _no_replica(run: Run) -> Server:
    _external("a replica")


def _url(run: Run) -> Server:
    if not os.environ.get(REPLICA_URL_ENV, "").strip():
        raise Unavailable(
            f"{REPLICA_URL_ENV} is not set: the run's Redis is external "
            f"({redis.SERVICE.url_env}), so its replica must be too"
        )
    return Server(
        "redis-replica", "url", check_external(REPLICA, "does not answer PING"), owned=False
    )


REPLICA = Service(
    name="redis-replica",
    title="Redis replica",
    url_env=REPLICA_URL_ENV,
    fixes=redis.SERVICE.fixes,
    providers={
        "url": _url,
        "local": _replica,
        "embedded": _replica,
        "docker": _no_replica,
    },
    problem=redis.SERVICE.problem,
    follows=redis.SERVICE.name,
)


def worker_replica(server: Server, namespace: redis.RedisNamespace) -> RedisReplica:
    """A worker's view of the run's replica: its namespace's database, there and on the
    run's Redis."""
    database = int(urlsplit(namespace.url).path.lstrip("/") or 0)
    return RedisReplica(redis.with_db(server.url, database), namespace.url, namespace.prefix)


# --- a test's own pair ------------------------------------------------------------------


@dataclass
class RedisPair(_pairs.Pair[RedisReplica]):
    """A Redis master and its replica of one test's own, for failover: promote the
    replica (REPLICAOF NO ONE), stop (SIGTERM) or kill either server, cut or slow the link.

    `primary_url` and `replica.url` are database 0 of each; `link` is the FaultProxy the
    replica follows its master through (`link.down()` cuts it: `replica.lag_bytes()`
    grows; `link.up()` restores it and the replica catches up).
    """

    def promote(self) -> None:
        """Make the replica a master (REPLICAOF NO ONE): it takes writes at once."""
        with redis_py.Redis.from_url(self.replica.url) as client:
            client.replicaof("NO", "ONE")


def start_pair(run: Run, primary: Server, name: str) -> RedisPair:
    """A fresh master (the binary of the run's Redis) and a replica of it following it
    through a FaultProxy; ServiceUnavailable naming what failed and the fix."""
    binary = primary.extra.get("binary")
    if binary is None:
        raise ServiceUnavailable(
            f"No Redis pair for this test: the run's Redis is not the kit's own "
            f"({primary.provider}), and a pair is made with its binary. "
            "Fix: --services redis=local (apt-get install -y redis-server)"
        )

    def first(node: str) -> tuple[Started, Path, str]:
        started = redis.start_redis(run, node, str(binary))
        return started, run.path / node, f"redis://127.0.0.1:{started.port}/0"

    def second(node: str, primary_url: str, via: str) -> tuple[Started, Path, str]:
        host, port = parse_address(via)
        args = ("--replicaof", host, str(port))
        started = redis.start_redis(run, node, str(binary), args, ready=_linked)
        return started, run.path / node, f"redis://127.0.0.1:{started.port}/0"

    try:
        return _pairs.start(RedisPair, run, name, first, second, RedisReplica)
    except Unavailable as exc:
        raise ServiceUnavailable(f"No Redis pair for this test: {exc}") from None


__all__ = [
    "NODES",
    "NODE_SERVICES",
    "REPLICA",
    "REPLICA_URL_ENV",
    "RedisPair",
    "RedisReplica",
    "Synced",
    "start_pair",
    "worker_replica",
]
