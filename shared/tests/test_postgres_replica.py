"""PostgreSQL replicas: the run's read replica follows its primary; a test's own pair can
have its replication paused (lag measured) and its replica promoted; nothing of either
a replica no provider can make is one clear error. (Their lifetime: test_replica_lifetime.)"""

from __future__ import annotations

import stat
from pathlib import Path

import asyncpg
import pytest
from conftest import finish, inner_env

from apex_testkit import PostgresPair, PostgresReplica, _loop
from apex_testkit._provisioning import postgres_replica
from apex_testkit._provisioning._chain import ServiceUnavailable, obtain
from apex_testkit._run import Run
from apex_testkit._waiting import wait_for


async def _execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _fetch(dsn: str, sql: str) -> list[object]:
    conn = await asyncpg.connect(dsn)
    try:
        return [row[0] for row in await conn.fetch(sql)]
    finally:
        await conn.close()


def test_the_replica_follows_a_write(postgres_replica: PostgresReplica) -> None:
    _loop.run(
        _execute(
            postgres_replica.primary_url,
            "CREATE TABLE IF NOT EXISTS followed (n int)",
            "INSERT INTO followed VALUES (1), (2)",
        )
    )
    written = postgres_replica.primary_lsn()
    replayed = postgres_replica.wait_for_lsn(written)
    assert postgres_replica_lsn(replayed) >= postgres_replica_lsn(written)
    assert _loop.run(_fetch(postgres_replica.url, "SELECT n FROM followed ORDER BY n")) == [1, 2]
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
        _loop.run(_execute(postgres_replica.url, "INSERT INTO followed VALUES (3)"))


def postgres_replica_lsn(lsn: str) -> int:
    return postgres_replica.lsn_value(lsn)


def test_the_replica_shows_the_reset(apex_worker, postgres_replica: PostgresReplica) -> None:
    """Before each test the replica has replayed the reset of this worker's database."""
    apex_worker.reset()  # what the tests before this one wrote (no clean_platform here)
    _loop.run(
        _execute(
            postgres_replica.primary_url,
            "INSERT INTO audit_events (action, subject, actor) VALUES ('x', 'y', 'selftest')",
        )
    )
    postgres_replica.wait_caught_up()
    assert _loop.run(_fetch(postgres_replica.url, "SELECT count(*) FROM audit_events")) == [1]
    apex_worker.reset()
    assert _loop.run(_fetch(postgres_replica.url, "SELECT count(*) FROM audit_events")) == [0]


def test_a_cut_link_makes_lag_measurable(postgres_pair: PostgresPair) -> None:
    replica = postgres_pair.replica
    _loop.run(_execute(postgres_pair.primary_url, "CREATE TABLE t (n int)"))
    replica.wait_caught_up()
    assert replica.lag_bytes() == 0
    postgres_pair.link.down()  # replication paused: the replica's connection is cut
    _loop.run(_execute(postgres_pair.primary_url, "INSERT INTO t SELECT generate_series(1, 100)"))
    behind = replica.lag_bytes()
    assert behind > 0
    assert _loop.run(_fetch(replica.url, "SELECT count(*) FROM t")) == [0]
    postgres_pair.link.up()  # the replica reconnects and catches up
    replica.wait_caught_up()
    assert replica.lag_bytes() == 0
    assert _loop.run(_fetch(replica.url, "SELECT count(*) FROM t")) == [100]


def test_promotion_makes_the_replica_writable(postgres_pair: PostgresPair) -> None:
    replica = postgres_pair.replica
    _loop.run(
        _execute(postgres_pair.primary_url, "CREATE TABLE t (n int)", "INSERT INTO t VALUES (1)")
    )
    replica.wait_caught_up()
    postgres_pair.kill_primary()
    postgres_pair.promote()
    _loop.run(_execute(replica.url, "INSERT INTO t VALUES (2)"))
    assert _loop.run(_fetch(replica.url, "SELECT n FROM t ORDER BY n")) == [1, 2]
    assert _loop.run(_fetch(replica.url, "SELECT pg_is_in_recovery()")) == [False]


async def _writable_port(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT inet_server_port()"))
    finally:
        await conn.close()


def _segments() -> set[int]:
    """The ids of the System V shared memory segments."""
    lines = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    return {int(line.split()[1]) for line in lines}


def test_killed_servers_leave_no_shared_memory_behind(apex_worker) -> None:
    """A killed PostgreSQL leaves its System V segment (named in its postmaster.pid) and
    its dynamic shared memory; once the pair is closed, neither is left."""
    posix_before = set(Path("/dev/shm").glob("PostgreSQL.*"))
    pair = apex_worker.postgres_pair()
    try:
        pid_file = pair._nodes["primary"].folder / "data" / "postmaster.pid"
        shmid = int(pid_file.read_text().splitlines()[6].split()[1])
        pair.kill_primary()
        assert shmid in _segments(), "the killed server's segment outlives it"
    finally:
        pair.close()  # kills the replica too
    # Removed at once; gone once the killed server's last backend has left.
    wait_for(lambda: shmid not in _segments(), timeout=10, message="the segment gone")
    assert set(Path("/dev/shm").glob("PostgreSQL.*")) <= posix_before


def test_a_multi_host_url_finds_the_new_primary(postgres_pair: PostgresPair) -> None:
    url = postgres_pair.multi_host_url
    assert _loop.run(_writable_port(url)) == int(
        postgres_pair.primary_url.split(":")[2].split("/")[0]
    )
    postgres_pair.stop_primary()
    postgres_pair.promote()
    assert _loop.run(_writable_port(url)) == int(
        postgres_pair.replica.url.split(":")[2].split("/")[0]
    )


# --- clear errors ------------------------------------------------------------------------


def _fake_primary(run: Run, bin_dir: Path) -> None:
    """The run's PostgreSQL, as the replica's provider reads it, with binaries in `bin_dir`."""
    server = {
        "service": "postgres", "provider": "local", "url": "postgresql://postgres@127.0.0.1:9/postgres",
        "version": "", "ready_seconds": 0.0, "owned": True, "extra": {"bin_dir": str(bin_dir)},
    }  # fmt: skip
    run.store("server-postgres", server)


@pytest.mark.parametrize("binary", ["missing", "failing"])
def test_no_replica_names_the_provider_and_the_fix(binary: str) -> None:
    run = Run.create()
    try:
        bin_dir = run.path / "bin"  # where the server's account can run a script from
        bin_dir.mkdir()
        if binary == "failing":
            script = bin_dir / "pg_basebackup"
            script.write_text(
                "#!/bin/sh\necho 'pg_basebackup: error: no replication here' >&2\nexit 1\n"
            )
            script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        _fake_primary(run, bin_dir)
        with pytest.raises(ServiceUnavailable) as caught:
            obtain(run, postgres_replica.REPLICA, ("local",))
    finally:
        run.close()
    message = str(caught.value)
    assert message.startswith("No PostgreSQL replica server for this test run. Providers tried")
    assert "(the provider of the run's postgres server: local)" in message
    if binary == "missing":
        assert f"  - local: no pg_basebackup in {bin_dir}, beside the run's postgres" in message
        assert "Fix: apt-get install -y postgresql-client" in message
    else:
        assert "exited with code 1: pg_basebackup: error: no replication here" in message
        assert "Fix: let the primary take replication connections" in message


USES_REPLICA_ONLY = """
import pytest

@pytest.mark.L2
@pytest.mark.bvj(segment="platform", goal="x", mrr=0, scenario="001#10")
def test_replica(postgres_replica):
    assert postgres_replica.url
"""


def test_an_external_primary_needs_an_external_replica(
    test_package, inner_pytest, postgres_database: str
) -> None:
    server_url = postgres_database.rsplit("/", 1)[0] + "/postgres"
    project = test_package("test_r.py", USES_REPLICA_ONLY)
    env = inner_env(APEX_TEST_POSTGRES_URL=server_url)
    code, out = finish(inner_pytest(str(project), env=env))
    assert code == 1, out
    assert "No PostgreSQL replica server for this test run. Providers tried, in order:" in out
    assert (
        "- url: APEX_TEST_POSTGRES_REPLICA_URL is not set: the run's PostgreSQL is external" in out
    )
    assert "Fix: point APEX_TEST_POSTGRES_REPLICA_URL at a running server" in out
    assert "Traceback" not in out
