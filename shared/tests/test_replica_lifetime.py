"""Replicas, extra nodes and pairs: one of each per run shared by its workers, each in its
own database; they live no longer than they should (a test's own pair stops at the end of
the test, the run's replicas and nodes at the end of the run, and a run killed with
SIGKILL leaves none of them running). At L4 none of them exists."""

from __future__ import annotations

import json
from pathlib import Path

import redis
from conftest import finish, inner_env

from apex_testkit._waiting import wait_for

from test_isolation import _run_dir_gone, _server_down  # isort: skip

USES_EVERYTHING = """
import json, os, pytest
from pathlib import Path
import asyncpg, redis
from apex_testkit import _loop
from apex_testkit._waiting import wait_for

bvj = pytest.mark.bvj(segment="platform", goal="x", mrr=0, scenario="001#10")
OUT = Path(os.environ["OUT_DIR"])

@pytest.mark.L2
@bvj
def test_1_everything(postgres_replica, postgres_pair, redis_replica, redis_nodes, redis_pair,
                      apex_run):
    seen = {
        "run": str(apex_run.path),
        "postgres": [postgres_replica.url, postgres_pair.primary_url, postgres_pair.replica.url],
        "redis": [redis_replica.url, *(n.url for n in redis_nodes), redis_pair.primary_url,
                  redis_pair.replica.url],
        "pairs": [postgres_pair.primary_url, postgres_pair.replica.url,
                  redis_pair.primary_url, redis_pair.replica.url],
    }
    # Whole or not at all: the outer test reads it as soon as it exists.
    (OUT / "seen.tmp").write_text(json.dumps(seen))
    (OUT / "seen.tmp").replace(OUT / "seen.json")
    if os.environ.get("HOLD"):  # with every server up, the pairs too, until killed
        wait_for(lambda: (OUT / "release").exists(), timeout=120)

@pytest.mark.L2
@bvj
def test_2_the_pairs_are_gone():
    for url in json.loads((OUT / "seen.json").read_text())["pairs"]:
        with pytest.raises((OSError, asyncpg.PostgresError, redis.ConnectionError)):
            if url.startswith("redis"):
                redis.Redis.from_url(url, socket_connect_timeout=1).ping()
            else:
                _loop.run(asyncpg.connect(url, timeout=1))
"""


def _redis_down(url: str) -> bool:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.ConnectionError:
        return True
    return False


def _all_down(seen: dict[str, list[str]]) -> bool:
    return all(map(_server_down, seen["postgres"])) and all(map(_redis_down, seen["redis"]))


def _run(inner_pytest, test_package, tmp_path: Path, **env: str):  # type: ignore[no-untyped-def]
    project = test_package("test_all.py", USES_EVERYTHING)
    out = tmp_path / "out"
    out.mkdir()
    return out, inner_pytest(str(project), env=inner_env(OUT_DIR=str(out), **env))


def test_everything_stops_with_its_test_or_its_run(test_package, inner_pytest, tmp_path: Path):
    out, run = _run(inner_pytest, test_package, tmp_path)
    code, text = finish(run)
    assert code == 0, text
    assert "2 passed" in text, text
    for server in ("postgres-replica", "redis-replica", "redis-node-1", "redis-node-3"):
        assert f"{server}: local " in text, text  # the run's summary names each
    seen = json.loads((out / "seen.json").read_text())
    assert _run_dir_gone(seen)
    assert _all_down(seen)


def test_kill_9_of_a_run_leaves_no_replica(test_package, inner_pytest, tmp_path: Path):
    out, run = _run(inner_pytest, test_package, tmp_path, HOLD="1")
    wait_for(lambda: (out / "seen.json").exists(), timeout=60, message="run up")
    seen = json.loads((out / "seen.json").read_text())
    assert not any(map(_server_down, seen["postgres"])), "the replica and the pair answer"
    assert not any(map(_redis_down, seen["redis"])), "the replica, the nodes and the pair answer"
    run.kill()  # SIGKILL: no teardown of any kind runs in the victim
    run.communicate()
    wait_for(lambda: _run_dir_gone(seen), timeout=30, message="run dir removed")
    assert _all_down(seen)


AT_L4 = """
import pytest

bvj = pytest.mark.bvj(segment="platform", goal="x", mrr=0, scenario="001#10")

@pytest.mark.L4
@bvj
@pytest.mark.parametrize(
    "name", ["postgres_replica", "postgres_pair", "redis_replica", "redis_nodes", "redis_pair"]
)
def test_asks_for(name, request):
    request.getfixturevalue(name)
"""


def test_none_exists_at_l4(test_package, inner_pytest, tmp_path: Path):
    project = test_package("test_l4.py", AT_L4)
    target = tmp_path / "target.toml"
    target.write_text('[services.auth]\nurl = "http://127.0.0.1:9"\n')
    code, text = finish(inner_pytest(str(project), "--level", "L4", "--target", str(target)))
    assert code == 1, text
    assert "5 failed" in text, text
    for name in ("postgres_replica", "postgres_pair", "redis_replica", "redis_nodes", "redis_pair"):
        assert f"WrongLevel: {name}" in text, text
    assert "exists at L2/L3 only, and this run is L4: mark the test for L2/L3 only" in text
    assert "apex-testkit servers" not in text, "nothing was started"


WORKERS_READ = """
import json, os, pytest
from pathlib import Path
import asyncpg
from apex_testkit import _loop

bvj = pytest.mark.bvj(segment="platform", goal="x", mrr=0, scenario="001#10")

@pytest.mark.L2
@bvj
@pytest.mark.parametrize("n", range(4))
def test_read_own(n, worker_id, postgres_replica, redis_replica, redis_nodes, clean_platform):
    async def run(dsn, sql, *args):
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()
    primary = postgres_replica.primary_url
    _loop.run(run(primary, "CREATE TABLE IF NOT EXISTS marks (who text)"))
    _loop.run(run(primary, "INSERT INTO marks VALUES ($1)", worker_id))
    postgres_replica.wait_caught_up()
    rows = _loop.run(run(postgres_replica.url, "SELECT DISTINCT who FROM marks"))
    assert [row[0] for row in rows] == [worker_id]
    seen = {"pg": postgres_replica.url, "redis": redis_replica.url,
            "nodes": [node.url for node in redis_nodes]}
    (Path(os.environ["OUT_DIR"]) / f"{worker_id}-{n}.json").write_text(json.dumps(seen))
"""


def test_workers_share_one_replica_each_in_its_own_database(
    test_package, inner_pytest, tmp_path: Path
):
    project = test_package("test_w.py", WORKERS_READ)
    out = tmp_path / "out"
    out.mkdir()
    code, text = finish(inner_pytest(str(project), "-n", "2", env=inner_env(OUT_DIR=str(out))))
    assert code == 0, text
    assert "4 passed" in text, text
    seen = {p.name.split("-")[0]: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert set(seen) == {"gw0", "gw1"}, "both workers ran tests"
    first, second = seen["gw0"], seen["gw1"]
    pairs = zip(
        [first["pg"], first["redis"], *first["nodes"]],
        [second["pg"], second["redis"], *second["nodes"]],
        strict=True,
    )
    for one, other in pairs:
        (server, database), (other_server, other_database) = (
            one.rsplit("/", 1),
            other.rsplit("/", 1),
        )
        assert other_server == server, "one server per run"
        assert other_database != database, "a database of each worker's own"
