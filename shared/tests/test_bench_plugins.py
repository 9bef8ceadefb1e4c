"""Benchmark (marker perf, `nox -s bench`): the kit's per-test reset against the per-test
isolation of pytest-postgresql and pytest-redis, side by side in one run.

Each side runs its own library's code, not a re-implementation:
- PostgreSQL, on the kit's server (one binary, one server, the platform's schema on both
  sides). The kit: `DatabaseReset` of the worker's database after a test wrote to two tables.
  pytest-postgresql: what its `postgresql` fixture does per test, with its own
  `DatabaseJanitor` (a template made as `postgresql_noproc` makes it, loaded with the
  platform's migrations; per test `with janitor:` clones it, then a psycopg connection is
  opened and closed, then the janitor drops the clone).
- Redis, the same redis-server binary. The kit: FLUSHDB of the worker's logical database
  on its long-lived connection. pytest-redis: what its `redisdb` fixture does per test (a
  new client of its `redis_proc` server, FLUSHALL after the test) against a server its
  own `RedisExecutor` started.

The test's body (writes to two tables, 100 keys) is not timed; set-up plus teardown is.
Numbers are printed as a table and written to reports/bench/reset_vs_plugins.json; the
ratio is reported, never asserted. The plugins are installed only in the bench env: the
test skips without them.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis

from apex_testkit import _loop
from apex_testkit._provisioning import postgres
from apex_testkit._provisioning._binaries import find_binary
from apex_testkit._sut.wiring import migrate

if TYPE_CHECKING:
    # Imported by the test itself (bench env only): elsewhere it is deselected (no --perf),
    # and a module-level skip would still be reported.
    import psycopg
    from pytest_postgresql.janitor import DatabaseJanitor
    from pytest_redis.executor import NoopRedis, RedisExecutor

pytestmark = pytest.mark.perf
REPORT = Path(os.environ.get("APEX_BENCH_DIR", "reports/bench")) / "reset_vs_plugins.json"
ROUNDS = int(os.environ.get("APEX_BENCH_RESET_ROUNDS", "50"))
# A database per test costs a few hundred ms on this machine: fewer rounds of it.
CLONE_ROUNDS = int(os.environ.get("APEX_BENCH_CLONE_ROUNDS", "15"))
GOAL = 20.0  # issue 9: the kit's reset at least 20x cheaper than a database per test

Cycle = Callable[[Callable[[], object]], float]  # runs one test's set-up, body, teardown


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(ordered), 3),
        "p95_ms": round(ordered[max(0, int(len(ordered) * 0.95) - 1)], 3),
        "rounds": len(ordered),
    }


def _timed(
    setup: Callable[[], Any], body: Callable[[Any], object], teardown: Callable[[Any], object]
) -> float:
    """Milliseconds of `setup` plus `teardown` around an untimed `body`."""
    started = time.perf_counter()
    handle = setup()
    spent = time.perf_counter() - started
    body(handle)
    started = time.perf_counter()
    teardown(handle)
    return (spent + time.perf_counter() - started) * 1000


async def _write_two_tables(dsn: str) -> None:
    """What a typical test leaves behind: a user and an audit event."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO users (id, email, tier) VALUES (gen_random_uuid(), "
            "md5(random()::text) || '@bench.invalid', 'free');"
            "INSERT INTO audit_events (action, subject, actor) VALUES ('a', 'b', 'c')"
        )
    finally:
        await conn.close()


def _write_keys(client: redis.Redis, prefix: str = "") -> None:
    client.mset({f"{prefix}{i}": i for i in range(100)})


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _plugin(module: str) -> Any:
    """`module` of a compared plugin (or its client), which the bench env alone installs."""
    return pytest.importorskip(module, reason="installed in the bench env only (nox -s bench)")


@pytest.fixture
def plugin_template(apex_worker: Any) -> Iterator[dict[str, Any]]:
    """pytest-postgresql's template on the kit's server, made as `postgresql_noproc` makes
    it (a janitor with as_template=True, then `load`), with the platform's migrations."""
    url = urlsplit(apex_worker.server("postgres").url)
    server = {"user": url.username or "postgres", "host": url.hostname, "port": url.port}
    name = f"{apex_worker.run.name}_pp"

    def load(**kw: Any) -> None:
        migrate(f"postgresql://{kw['user']}@{kw['host']}:{kw['port']}/{kw['dbname']}")

    janitors = _plugin("pytest_postgresql.janitor")
    template = janitors.DatabaseJanitor(**server, dbname=f"{name}_tmpl", as_template=True)
    with template:
        template.load(load)
        yield {**server, "dbname": name, "template_dbname": template.dbname}


def test_reset_vs_pytest_postgresql_and_pytest_redis(
    postgres_database: str, redis_namespace: Any, plugin_template: dict[str, Any]
) -> None:
    rows: dict[str, dict[str, float]] = {}
    janitors = _plugin("pytest_postgresql.janitor")
    pg_client = _plugin("psycopg")
    executors = _plugin("pytest_redis.executor")

    # -- PostgreSQL ---------------------------------------------------------------------
    kit_reset = postgres.DatabaseReset(postgres_database)
    kit_reset()
    try:
        samples = [
            _timed(lambda: None, lambda _: _loop.run(_write_two_tables(postgres_database)),
                   lambda _: kit_reset())
            for _ in range(ROUNDS)
        ]  # fmt: skip
    finally:
        kit_reset.close()
    rows["postgres: kit reset (2 tables written)"] = _stats(samples)

    pg = plugin_template
    dsn = f"postgresql://{pg['user']}@{pg['host']}:{pg['port']}/{pg['dbname']}"

    def pp_setup() -> tuple[DatabaseJanitor, psycopg.Connection]:
        # The body of pytest_postgresql.factories.client.postgresql, set-up half.
        janitor = janitors.DatabaseJanitor(
            user=pg["user"], host=pg["host"], port=pg["port"], dbname=pg["dbname"],
            template_dbname=pg["template_dbname"],
        )  # fmt: skip
        janitor.__enter__()
        conn = pg_client.connect(
            dbname=pg["dbname"], user=pg["user"], host=pg["host"], port=pg["port"], options=""
        )
        return janitor, conn

    def pp_teardown(handle: tuple[DatabaseJanitor, psycopg.Connection]) -> None:
        janitor, conn = handle
        conn.close()
        janitor.__exit__(None, None, None)

    samples = [
        _timed(pp_setup, lambda _: _loop.run(_write_two_tables(dsn)), pp_teardown)
        for _ in range(CLONE_ROUNDS)
    ]
    rows["postgres: pytest-postgresql `postgresql`"] = _stats(samples)

    # -- Redis --------------------------------------------------------------------------
    kit_url = urlsplit(redis_namespace.url)
    kit_client = redis_namespace.client()
    redis_namespace.reset()
    samples = [
        _timed(lambda: None, lambda _: _write_keys(kit_client, redis_namespace.prefix),
               lambda _: redis_namespace.reset())
        for _ in range(ROUNDS)
    ]  # fmt: skip
    kit_client.close()
    rows["redis: kit reset (100 keys written)"] = _stats(samples)

    binary = str(find_binary(["redis-server", "valkey-server"]))
    with tempfile.TemporaryDirectory(prefix="apex-bench-redis-", dir="/tmp") as datadir:
        proc = executors.RedisExecutor(
            # redis_proc's defaults (pytest-redis's ini options); no `save` given, so the
            # server keeps redis-server's own save points and FLUSHALL writes a dump.
            binary, databases=8, redis_timeout=15, loglevel="notice", host="127.0.0.1",
            port=_free_port(), datadir=Path(datadir),
        )  # fmt: skip
        proc.start()
        try:
            samples = [_timed(_redisdb_setup(proc), _write_keys, _redisdb_teardown)
                       for _ in range(ROUNDS)]  # fmt: skip
        finally:
            proc.stop()
    rows["redis: pytest-redis `redisdb`"] = _stats(samples)
    # The same fixture on the kit's server (no save points): the client and FLUSHALL alone.
    kit_server = executors.NoopRedis(host=kit_url.hostname, port=kit_url.port)
    samples = [_timed(_redisdb_setup(kit_server), _write_keys, _redisdb_teardown)
               for _ in range(ROUNDS)]  # fmt: skip
    rows["redis: pytest-redis `redisdb`, kit's server"] = _stats(samples)

    def ratio(plugin: str, kit: str) -> float:
        return round(rows[plugin]["median_ms"] / max(rows[kit]["median_ms"], 1e-6), 1)

    pg_kit, redis_kit = (
        "postgres: kit reset (2 tables written)",
        "redis: kit reset (100 keys written)",
    )
    ratios = {
        "postgres: pytest-postgresql / kit": ratio(
            "postgres: pytest-postgresql `postgresql`", pg_kit
        ),
        "redis: pytest-redis / kit": ratio("redis: pytest-redis `redisdb`", redis_kit),
        "redis: pytest-redis on kit's server / kit": ratio(
            "redis: pytest-redis `redisdb`, kit's server", redis_kit
        ),
        "goal: each ratio (kit vs plugin) at least": GOAL,
    }
    _report(rows, ratios)


def _redisdb_setup(proc: RedisExecutor | NoopRedis) -> Callable[[], redis.Redis]:
    def setup() -> redis.Redis:
        # The body of pytest_redis.factories.client.redisdb, set-up half (dbnum 0).
        return redis.Redis(
            proc.host, proc.port, 0, username=proc.username, password=proc.password,
            unix_socket_path=proc.unixsocket, decode_responses=False,
        )  # fmt: skip

    return setup


def _redisdb_teardown(client: redis.Redis) -> None:
    client.flushall()  # the fixture's teardown half
    client.close()  # what garbage collection would do later


def _report(rows: dict[str, dict[str, float]], ratios: dict[str, float]) -> None:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    # The machine's load: on a shared 2-core machine the numbers mean little without it.
    load = round(os.getloadavg()[0], 2)
    data = {"loadavg_1min": load, "per_test": rows, "ratios": ratios}
    REPORT.write_text(json.dumps(data, indent=2) + "\n")
    print(
        f"\n== per-test isolation: kit vs pytest-postgresql, pytest-redis (load {load}) -> {REPORT}"
    )
    print(f"  {'per test (set-up + teardown)':42} {'median ms':>10} {'p95 ms':>10} {'rounds':>7}")
    for name, row in rows.items():
        print(f"  {name:42} {row['median_ms']:>10.3f} {row['p95_ms']:>10.3f} {row['rounds']:>7}")
    print(f"  {'ratio of medians (plugin / kit)':42}")
    for name, times in ratios.items():
        print(f"  {name:42} {times:>10.1f}x")
