"""PostgreSQL streaming replicas: the run's read replica of its server, and a test's own
primary and replica pair for failover.

The run's replica is made once per run, like the servers, by the first process that
needs it: `pg_basebackup` of the run's PostgreSQL (a replication slot keeps the WAL it
still needs), then a hot standby streaming from it directly. Every worker reads its own
database there. Promoting it, stopping it or cutting its replication would do that to
every worker of the run, so the run's replica offers none of that: a test that does gets
a pair of its own (`start_pair`), a fresh primary copied from the cached initdb and a
replica of it that streams through a FaultProxy (the replication link), stopped at the
end of the test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import asyncpg

from apex_testkit import _loop
from apex_testkit._faults import parse_address
from apex_testkit._processes import RunAs
from apex_testkit._provisioning import _pairs, postgres
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
from apex_testkit._waiting import DeadlineExceeded

T = TypeVar("T")
REPLICA_URL_ENV = "APEX_TEST_POSTGRES_REPLICA_URL"
# A standby's own settings, after the primary's (postgres.SERVER_SETTINGS). Feedback
# keeps the primary's VACUUM from removing rows a query on the replica still reads; a
# lost replication connection is retried every 100 ms, not 5 s, so a test that cut it
# (`PostgresPair.link`) sees the replica catch up as soon as it is back.
STANDBY_SETTINGS = (
    "hot_standby=on", "hot_standby_feedback=on", "wal_retrieve_retry_interval=100ms",
)  # fmt: skip
BASE_BACKUP_TIMEOUT = 120.0


def lsn_value(lsn: str) -> int:
    """A WAL position (`16/B374D848`) as a number of bytes, to compare and subtract."""
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


async def _on(dsn: str, use: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """`use` a new connection to `dsn`, closed after."""
    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    try:
        return await use(conn)
    finally:
        await conn.close()


async def _replay_lsn(conn: asyncpg.Connection) -> str:
    return str(await conn.fetchval("SELECT pg_last_wal_replay_lsn()::text"))


async def _flushed_lsn(conn: asyncpg.Connection) -> str:
    """The primary's WAL flush position once all WAL so far is flushed. The kit's servers
    commit asynchronously (synchronous_commit=off): a commit may still be in the WAL
    buffers, which a replica is not sent. A synchronous commit of a transaction that
    wrote WAL (a one-record message no reader decodes) flushes everything before it."""
    await conn.execute(
        "SET synchronous_commit = on; SELECT pg_logical_emit_message(true, 'apex-testkit', '')"
    )
    return str(await conn.fetchval("SELECT pg_current_wal_flush_lsn()::text"))


async def _replayed(conn: asyncpg.Connection, lsn: str, timeout: float) -> str:
    """Poll the replica on `conn` until it has replayed up to `lsn`; its replay position."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        replayed = await _replay_lsn(conn)
        if lsn_value(replayed) >= lsn_value(lsn):
            return replayed
        if time.monotonic() >= deadline:
            raise DeadlineExceeded(
                f"the replica replayed WAL up to {replayed}, not {lsn}, within {timeout:g} s"
            )
        await asyncio.sleep(pause)  # polling the replica, with a deadline
        pause = min(pause * 2, 0.05)


@dataclass(frozen=True)
class PostgresReplica:
    """A hot standby streaming from a primary, as a test sees it: `url` is a database on
    the replica (read-only until promoted), `primary_url` the same database on the
    primary. WAL positions (LSNs) are PostgreSQL's text form, `16/B374D848`."""

    url: str
    primary_url: str

    def primary_lsn(self) -> str:
        """Where the primary's WAL ends now, flushed: every write committed before this
        call is replayed on the replica once it reaches this position."""
        return _loop.run(_on(self.primary_url, _flushed_lsn))

    def replay_lsn(self) -> str:
        """How far the replica has replayed the primary's WAL (`pg_last_wal_replay_lsn()`)."""
        return _loop.run(_on(self.url, _replay_lsn))

    def lag_bytes(self) -> int:
        """Bytes of WAL the primary has written that the replica has not replayed yet."""
        return max(0, lsn_value(self.primary_lsn()) - lsn_value(self.replay_lsn()))

    def wait_for_lsn(self, lsn: str, *, timeout: float = 10.0) -> str:
        """Wait until the replica has replayed the WAL up to `lsn`; return its replay
        position. DeadlineExceeded, naming both positions, when it has not in time."""
        return _loop.run(_on(self.url, lambda conn: _replayed(conn, lsn, timeout)), timeout + 30)

    def wait_caught_up(self, *, timeout: float = 10.0) -> str:
        """Wait until the replica has replayed everything committed on the primary so far."""
        return self.wait_for_lsn(self.primary_lsn(), timeout=timeout)


@dataclass
class CaughtUp:
    """`wait_caught_up` of a replica through two long-lived connections: a worker's
    per-test wait for the run's replica to replay the reset costs about a millisecond,
    not two connects."""

    replica: PostgresReplica
    timeout: float = RESET_TIMEOUT
    _primary: asyncpg.Connection | None = None
    _standby: asyncpg.Connection | None = None

    def __call__(self) -> None:
        """Return once the replica has replayed everything committed on the primary."""
        _loop.run(self._wait(), self.timeout + 30)

    async def _wait(self) -> None:
        try:
            if self._primary is None or self._primary.is_closed():
                self._primary = await asyncpg.connect(
                    self.replica.primary_url, timeout=CONNECT_TIMEOUT
                )
            if self._standby is None or self._standby.is_closed():
                self._standby = await asyncpg.connect(self.replica.url, timeout=CONNECT_TIMEOUT)
            await _replayed(self._standby, await _flushed_lsn(self._primary), self.timeout)
        except BaseException:
            # In whatever state they are, new connections serve the next wait.
            self._drop()
            raise

    def _drop(self) -> None:
        for conn in (self._primary, self._standby):
            if conn is not None:
                conn.terminate()
        self._primary = self._standby = None

    def close(self) -> None:
        """Close both connections."""
        _loop.run(self._close())

    async def _close(self) -> None:
        self._drop()


# --- making a replica ------------------------------------------------------------------


def _conninfo(url: str, application: str) -> str:
    """A libpq key/value connection string to the server at `url` (a replica's
    primary_conninfo and pg_basebackup's -d)."""
    host, port = parse_address(url)
    user = urlsplit(url).username or "postgres"
    return f"host={host} port={port} user={user} application_name={application}"


def _client_package(bin_dir: Path) -> str:
    major = bin_dir.parent.name
    return f"postgresql-client-{major}" if major.isdigit() else "postgresql-client"


def base_backup(
    bin_dir: Path, primary_url: str, folder: Path, run_as: RunAs | None, slot: str
) -> None:
    """`pg_basebackup` of the server at `primary_url` into `folder`/data, with a
    replication slot `slot` that keeps the WAL the replica still needs; Unavailable when
    there is no pg_basebackup, Failed (with what it said) when it fails."""
    binary = bin_dir / "pg_basebackup"
    if not binary.is_file():
        raise Unavailable(f"no pg_basebackup in {bin_dir}, beside the run's postgres")
    argv = [
        str(binary), "-D", str(folder / "data"), "-d", _conninfo(primary_url, slot),
        "--checkpoint=fast", "--wal-method=stream", "--no-sync", "--create-slot",
        f"--slot={slot}",
    ]  # fmt: skip
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=False,
            timeout=BASE_BACKUP_TIMEOUT,
            user=run_as.uid if run_as else None,
            group=run_as.gid if run_as else None,
            extra_groups=[] if run_as else None,
            cwd=folder,
        )
    except subprocess.TimeoutExpired:
        raise Failed(
            f"pg_basebackup of {primary_url} took over {BASE_BACKUP_TIMEOUT:g} s"
        ) from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip() or "(no output)"
        raise Failed(
            f"pg_basebackup of {primary_url} exited with code {done.returncode}: {said}",
            fix=(
                "Fix: let the primary take replication connections from 127.0.0.1 "
                "(pg_hba.conf `host replication`, max_wal_senders > 0, wal_level=replica); "
                f"the kit's own servers do. Run `{binary} --version` to check the binary"
            ),
        )


def start_replica(
    run: Run, name: str, bin_dir: Path, primary_url: str, *, via: str | None = None
) -> tuple[Started, Path]:
    """A hot standby of the server at `primary_url`, from a base backup, recorded in the
    run as `name`; it streams from `via` (host:port of a proxy) when given. Returns the
    started server and its folder."""
    run_as = postgres.server_account()
    folder = run.server_dir(name, run_as)
    if run_as:
        run_as.own(folder)
    slot = name.replace("-", "_")
    base_backup(bin_dir, primary_url, folder, run_as, slot)
    signal_file = folder / "data" / "standby.signal"
    signal_file.touch()
    if run_as:
        run_as.own(signal_file)
    conninfo = _conninfo(f"postgresql://{via}" if via else primary_url, slot)
    settings = (*STANDBY_SETTINGS, f"primary_conninfo={conninfo}", f"primary_slot_name={slot}")
    return postgres.start_cluster(run, name, bin_dir, folder, run_as, settings), folder


# --- the run's replica: a server of the run, obtained like the others -------------------


def _primary(run: Run) -> Server:
    stored = run.read(f"server-{postgres.SERVICE.name}")
    if not stored or "error" in stored:
        raise Unavailable("the run has no PostgreSQL server to replicate")
    return Server(**stored)


def _local(run: Run) -> Server:
    primary = _primary(run)
    if os.environ.get(REPLICA_URL_ENV, "").strip():
        raise Failed(
            f"{REPLICA_URL_ENV} is set, but the run's PostgreSQL is the kit's own "
            f"({primary.provider}): a replica of another server is no replica of it",
            fix=f"Fix: unset {REPLICA_URL_ENV}, or set {postgres.SERVICE.url_env} "
            "to the server it replicates",
        )
    bin_dir = Path(primary.extra["bin_dir"])
    started, _ = start_replica(run, "postgres-replica", bin_dir, primary.url)
    version = version_of([str(bin_dir / "postgres"), "--version"])
    url = f"postgresql://postgres@127.0.0.1:{started.port}/postgres"
    return Server("postgres-replica", primary.provider, url, version, extra=started.extra())


def _url(run: Run) -> Server:
    if not os.environ.get(REPLICA_URL_ENV, "").strip():
        raise Unavailable(
            f"{REPLICA_URL_ENV} is not set: the run's PostgreSQL is external "
            f"({postgres.SERVICE.url_env}), so its replica must be too"
        )
    url = check_external(REPLICA, "does not let the kit connect")
    return Server("postgres-replica", "url", url, owned=False)


def _docker(run: Run) -> Server:
    raise Failed(
        "the run's PostgreSQL is a container: the kit makes replicas only of servers it "
        "runs from a binary (pg_basebackup, then a standby of the same version)",
        fix="Fix: --services postgres=local (apt-get install -y postgresql)",
    )


REPLICA = Service(
    name="postgres-replica",
    title="PostgreSQL replica",
    url_env=REPLICA_URL_ENV,
    fixes={
        "local": "apt-get install -y postgresql-client   (it ships pg_basebackup)",
        "embedded": "pip install pgserver   (a wheel that ships pg_basebackup)",
    },
    providers={"url": _url, "local": _local, "embedded": _local, "docker": _docker},
    problem=postgres.SERVICE.problem,
    follows=postgres.SERVICE.name,
)


def worker_replica(server: Server, primary_dsn: str) -> PostgresReplica:
    """Worker's view of the run's replica: its own database, there and on the primary."""
    database = urlsplit(primary_dsn).path.lstrip("/")
    return PostgresReplica(postgres.with_database(server.url, database), primary_dsn)


# --- a test's own pair ------------------------------------------------------------------


@dataclass
class PostgresPair(_pairs.Pair[PostgresReplica]):
    """A primary and its streaming replica of one test's own, for failover: promote the
    replica, stop or kill either server, cut or slow the replication link.

    `primary_url` and `replica.url` are the `postgres` database of each; `link` is the
    FaultProxy the replica streams through: `link.down()` cuts replication (the primary
    goes on, `replica.lag_bytes()` grows), `link.up()` restores it (the replica reconnects
    within 100 ms and catches up); `link.latency(ms)` delays it. `stop_primary()` is a
    fast shutdown (clients are disconnected); `close()` an immediate one.
    """

    _STOP = signal.SIGINT
    _CLOSE = signal.SIGQUIT

    @property
    def multi_host_url(self) -> str:
        """Both servers in one DSN, for a client that must find the writable one
        (`target_session_attrs=read-write`: libpq, asyncpg)."""
        hosts = ",".join(
            urlsplit(url).netloc.rpartition("@")[2] for url in (self.primary_url, self.replica.url)
        )
        return f"postgresql://postgres@{hosts}/postgres?target_session_attrs=read-write"

    def promote(self, *, timeout: float = 30.0) -> None:
        """Promote the replica (`pg_promote`), and return once it takes writes."""
        sql = f"SELECT pg_promote(true, {max(1, int(timeout))})"
        if _loop.run(_on(self.replica.url, lambda conn: conn.fetchval(sql))) is not True:
            raise TimeoutError(f"the replica was not promoted within {timeout:g} s")


def _server_url(started: Started) -> str:
    return f"postgresql://postgres@127.0.0.1:{started.port}/postgres"


def start_pair(run: Run, primary: Server, name: str) -> PostgresPair:
    """A fresh primary (from the cached initdb, with the binaries of the run's server)
    and a replica of it streaming through a FaultProxy; ServiceUnavailable naming what
    failed and the fix."""
    bin_dir = primary.extra.get("bin_dir")
    if bin_dir is None:
        raise ServiceUnavailable(
            f"No PostgreSQL pair for this test: the run's PostgreSQL is not the kit's own "
            f"({primary.provider}), and a pair is made with its binaries. "
            f"Fix: unset {postgres.SERVICE.url_env}, or --services postgres=local"
        )
    binaries = Path(bin_dir)

    def first(node: str) -> tuple[Started, Path, str]:
        run_as = postgres.server_account()
        folder = postgres.new_cluster(run, node, binaries, run_as)
        started = postgres.start_cluster(run, node, binaries, folder, run_as)
        return started, folder, _server_url(started)

    def second(node: str, primary_url: str, via: str) -> tuple[Started, Path, str]:
        started, folder = start_replica(run, node, binaries, primary_url, via=via)
        return started, folder, _server_url(started)

    try:
        return _pairs.start(PostgresPair, run, name, first, second, PostgresReplica)
    except Unavailable as exc:
        fix = getattr(exc, "fix", "") or f"Fix: {REPLICA.fixes['local']}"
        raise ServiceUnavailable(f"No PostgreSQL pair for this test: {exc}\n{fix}") from None


__all__ = [
    "REPLICA",
    "REPLICA_URL_ENV",
    "CaughtUp",
    "PostgresPair",
    "PostgresReplica",
    "base_backup",
    "lsn_value",
    "start_pair",
    "start_replica",
    "worker_replica",
]
