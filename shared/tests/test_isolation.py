"""Isolation: workers of a run, runs on one machine, and the reset between tests."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import pytest
import redis
from conftest import finish, inner_env, own_redis

from apex_testkit import RedisNamespace, _loop
from apex_testkit._provisioning.clickhouse import client as clickhouse_client
from apex_testkit._waiting import wait_for

WORKERS_WRITE = """
import json, os, pytest
import asyncpg
from apex_testkit import _loop
from apex_testkit._provisioning.clickhouse import client

bvj = pytest.mark.bvj(segment="platform", goal="x", mrr=0, scenario="001#10")

@pytest.mark.L2
@bvj
@pytest.mark.parametrize("n", range(6))
def test_write_and_see_only_own(
    n, worker_id, postgres_database, redis_namespace, clickhouse_database, clean_platform
):
    async def pg():
        conn = await asyncpg.connect(postgres_database)
        try:
            await conn.execute("CREATE TABLE IF NOT EXISTS marks (who text)")
            before = await conn.fetchval("SELECT count(*) FROM marks")
            await conn.execute("INSERT INTO marks VALUES ($1)", worker_id)
            return before, await conn.fetch("SELECT DISTINCT who FROM marks")
        finally:
            await conn.close()
    before, whos = _loop.run(pg())
    assert before == 0  # the reset emptied what the previous test wrote
    assert [r["who"] for r in whos] == [worker_id]
    redis = redis_namespace.client()
    assert redis.dbsize() == 0
    redis.set(redis_namespace.prefix + "who", worker_id)
    ch = client(clickhouse_database)
    ch.execute("CREATE TABLE IF NOT EXISTS marks (who String) ENGINE = MergeTree ORDER BY who")
    assert ch.execute("SELECT count() FROM marks") == [(0,)]
    ch.execute("INSERT INTO marks VALUES", [(worker_id,)])
    out = os.environ["OUT_DIR"]
    seen = {"pg": postgres_database, "redis": redis_namespace.url, "ch": clickhouse_database}
    # Written whole, then renamed: nothing reads a half-written file.
    with open(f"{out}/{worker_id}-{n}.partial", "w") as f:
        json.dump(seen, f)
    os.rename(f"{out}/{worker_id}-{n}.partial", f"{out}/{worker_id}-{n}.json")
"""

HOLD = """
import json, os, pytest
from pathlib import Path
from apex_testkit._waiting import wait_for

bvj = pytest.mark.bvj(segment="platform", goal="x", mrr=0, scenario="001#10")

@pytest.mark.L2
@bvj
def test_hold(postgres_database, redis_namespace, apex_run):
    out = Path(os.environ["OUT_DIR"])
    # Written whole, then renamed: the outer test reads the file as soon as it exists.
    partial = out / f"{os.environ['NAME']}.partial"
    partial.write_text(json.dumps(
        {"run": str(apex_run.path), "pg": postgres_database, "redis": redis_namespace.url}))
    partial.rename(out / f"{os.environ['NAME']}.json")
    # Hold the run open until the outer test says so (or kills us).
    wait_for(lambda: (out / f"{os.environ['NAME']}.release").exists(), timeout=120)
"""


def test_each_worker_has_its_own_namespaces(test_package, inner_pytest, tmp_path: Path):
    project = test_package("test_w.py", WORKERS_WRITE)
    out = tmp_path / "out"
    out.mkdir()
    code, text = finish(inner_pytest(str(project), "-n", "2", env=inner_env(OUT_DIR=str(out))))
    assert code == 0, text
    assert "6 passed" in text
    seen = {p.name.split("-")[0]: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert set(seen) == {"gw0", "gw1"}, "both workers ran tests"
    for kind in ("pg", "redis", "ch"):
        assert seen["gw0"][kind] != seen["gw1"][kind], kind
    # One server per service for the run: the workers share host and port.
    for kind in ("pg", "redis", "ch"):
        assert seen["gw0"][kind].rsplit("/", 1)[0] == seen["gw1"][kind].rsplit("/", 1)[0], kind


def _run_dir_gone(info: dict[str, str]) -> bool:
    return not Path(info["run"]).exists()


def _server_down(dsn: str) -> bool:
    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(dsn, timeout=1)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return True
        await conn.close()
        return False

    return _loop.run(probe())


def test_two_runs_at_once_never_meet(test_package, inner_pytest, tmp_path: Path):
    project = test_package("test_hold.py", HOLD)
    out = tmp_path / "out"
    out.mkdir()
    runs = [
        inner_pytest(str(project), env=inner_env(OUT_DIR=str(out), NAME=name))
        for name in ("first", "second")
    ]
    wait_for(lambda: len(list(out.glob("*.json"))) == 2, timeout=60, message="both runs up")
    first, second = (json.loads((out / f"{n}.json").read_text()) for n in ("first", "second"))
    assert first["run"] != second["run"]
    assert first["pg"].rsplit("/", 1)[0] != second["pg"].rsplit("/", 1)[0], "own servers"
    assert first["redis"] != second["redis"]
    for name in ("first", "second"):
        (out / f"{name}.release").touch()
    for run in runs:
        code, text = finish(run)
        assert code == 0, text
    assert _run_dir_gone(first)
    assert _run_dir_gone(second)
    assert _server_down(first["pg"])
    assert _server_down(second["pg"])


def test_kill_9_of_a_run_leaves_nothing(test_package, inner_pytest, tmp_path: Path):
    """The watchdog cleans up the moment the owner dies."""
    project = test_package("test_hold.py", HOLD)
    out = tmp_path / "out"
    out.mkdir()
    run = inner_pytest(str(project), env=inner_env(OUT_DIR=str(out), NAME="victim"))
    wait_for(lambda: (out / "victim.json").exists(), timeout=60, message="run up")
    info = json.loads((out / "victim.json").read_text())
    run.kill()  # SIGKILL: no teardown of any kind runs in the victim
    run.communicate()
    wait_for(lambda: _run_dir_gone(info), timeout=30, message="run dir removed")
    assert _server_down(info["pg"])


def test_next_run_sweeps_what_a_dead_run_left(test_package, inner_pytest, tmp_path: Path):
    """Even with its watchdog killed too, the next run removes a dead run's servers."""
    from apex_testkit._run import Run

    project = test_package("test_hold.py", HOLD)
    out = tmp_path / "out"
    out.mkdir()
    run = inner_pytest(str(project), env=inner_env(OUT_DIR=str(out), NAME="victim"))
    wait_for(lambda: (out / "victim.json").exists(), timeout=60, message="run up")
    info = json.loads((out / "victim.json").read_text())
    _kill_watchdog_of(Path(info["run"]))
    run.kill()
    run.communicate()
    assert not _server_down(info["pg"]), "nothing cleaned up yet"
    Run.create().close()  # what every new run does first
    assert _run_dir_gone(info)
    assert _server_down(info["pg"])


def _kill_watchdog_of(run_dir: Path) -> None:
    import os
    import signal

    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"apex_testkit._watchdog" in cmdline and str(run_dir).encode() in cmdline:
            os.kill(int(proc.name), signal.SIGKILL)
            return
    raise AssertionError(f"no watchdog for {run_dir}")


def test_ctrl_c_cleans_up(test_package, inner_pytest, tmp_path: Path):
    import signal

    project = test_package("test_hold.py", HOLD)
    out = tmp_path / "out"
    out.mkdir()
    run = inner_pytest(str(project), env=inner_env(OUT_DIR=str(out), NAME="interrupted"))
    wait_for(lambda: (out / "interrupted.json").exists(), timeout=60, message="run up")
    info = json.loads((out / "interrupted.json").read_text())
    run.send_signal(signal.SIGINT)
    code, text = finish(run)
    assert code == 2, text  # pytest: interrupted
    assert _run_dir_gone(info), "the run cleaned up itself, not the watchdog"
    assert _server_down(info["pg"])


def test_reset_empties_what_a_test_wrote(
    apex_worker, postgres_database, redis_namespace, clickhouse_database
):
    async def write() -> None:
        conn = await asyncpg.connect(postgres_database)
        try:
            await conn.execute(
                "INSERT INTO audit_events (action, subject, actor) VALUES ('x', 'y', 'selftest')"
            )
        finally:
            await conn.close()

    async def count() -> int:
        conn = await asyncpg.connect(postgres_database)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM audit_events"))
        finally:
            await conn.close()

    _loop.run(write())
    redis_namespace.client().set(f"{redis_namespace.prefix}k", "v")
    ch = clickhouse_client(clickhouse_database)
    ch.execute("CREATE TABLE IF NOT EXISTS r (a UInt8) ENGINE = MergeTree ORDER BY a")
    ch.execute("INSERT INTO r VALUES", [(1,)])
    assert _loop.run(count()) == 1

    apex_worker.reset()

    assert _loop.run(count()) == 0
    assert redis_namespace.client().dbsize() == 0
    assert ch.execute("SELECT count() FROM r") == [(0,)]
    migrations = _loop.run(_migrations(postgres_database))
    assert migrations > 0, "the schema and its migration history survive a reset"


def test_a_redis_reset_logs_in_with_the_urls_password(apex_worker):
    with own_redis(apex_worker.run, "--requirepass", "pw 1", password="pw 1") as port:
        namespace = RedisNamespace(f"redis://:pw%201@127.0.0.1:{port}/2", "w1:", exclusive=True)
        client = redis.Redis(port=port, password="pw 1", db=2)
        client.set("w1:k", "v")

        namespace.reset()

        assert client.dbsize() == 0
        wrong = RedisNamespace(f"redis://:nope@127.0.0.1:{port}/2", "w1:", exclusive=True)
        client.set("w1:k", "v")
        with pytest.raises(redis.ResponseError, match="WRONGPASS"):
            wrong.reset()
        assert client.dbsize() == 1
        client.close()
        namespace.close()


async def _migrations(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM apex_schema_migrations"))
    finally:
        await conn.close()
