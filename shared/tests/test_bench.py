"""Benchmarks of the kit (marker perf, `nox -s bench`): what isolation costs.

Numbers are printed and written to reports/bench/testkit.json; nothing here fails on speed.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from apex_testkit import _loop
from apex_testkit._provisioning import SERVICES
from apex_testkit._provisioning._chain import _provide
from apex_testkit._run import Run
from apex_testkit._sut.in_process import InProcessPlatform

pytestmark = pytest.mark.perf
REPORT = Path(os.environ.get("APEX_BENCH_DIR", "reports/bench")) / "testkit.json"


def _measure(
    action: Callable[[], object], rounds: int = 50, prepare: Callable[[], object] = lambda: None
) -> dict[str, float]:
    """Time `action` alone (`prepare` runs before each round, untimed)."""
    samples = []
    for _ in range(rounds):
        prepare()
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {
        "median_ms": round(statistics.median(samples), 3),
        "p95_ms": round(samples[int(len(samples) * 0.95) - 1], 3),
        "rounds": rounds,
    }


def _write(section: str, numbers: dict[str, dict[str, float]]) -> None:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    data[section] = numbers
    REPORT.write_text(json.dumps(data, indent=2))
    print(f"\n{section}:")
    for name, row in numbers.items():
        print(f"  {name:38} " + "  ".join(f"{k}={v}" for k, v in row.items()))


def test_reset_cost(apex_worker, postgres_database, redis_namespace):
    async def touch() -> None:
        conn = await asyncpg.connect(postgres_database)
        try:
            await conn.execute(
                "INSERT INTO users (id, email, tier) VALUES (gen_random_uuid(), "
                "md5(random()::text) || '@bench.invalid', 'free');"
                "INSERT INTO audit_events (action, subject, actor) VALUES ('a', 'b', 'c')"
            )
        finally:
            await conn.close()

    client = redis_namespace.client()

    def dirty() -> None:
        _loop.run(touch())
        client.mset({f"{redis_namespace.prefix}{i}": i for i in range(100)})

    numbers = {
        "worker reset, nothing touched": _measure(apex_worker.reset),
        "worker reset, 2 tables + 100 keys": _measure(apex_worker.reset, prepare=dirty),
        "redis FLUSHDB alone, 100 keys": _measure(redis_namespace.reset, prepare=dirty),
    }
    assert client.dbsize() == 0
    _write("per-test reset", numbers)


def test_time_to_ready():
    """Each service alone, then all three, from a cold run directory."""
    numbers: dict[str, dict[str, float]] = {}
    for name in ("redis", "postgres", "clickhouse"):
        samples = []
        for _ in range(3):
            run = Run.create()
            try:
                started = time.perf_counter()
                provided = _provide(run, SERVICES[name], ("local",))
                samples.append((time.perf_counter() - started) * 1000)
                assert "error" not in provided, provided
            finally:
                run.close()
        numbers[name] = {"median_ms": round(statistics.median(samples), 1), "rounds": 3}
    run = Run.create()
    try:
        started = time.perf_counter()
        for name in ("redis", "postgres", "clickhouse"):
            _provide(run, SERVICES[name], ("local",))
        numbers["all three, one after another"] = {
            "median_ms": round((time.perf_counter() - started) * 1000, 1),
            "rounds": 1,
        }
        started = time.perf_counter()
    finally:
        run.close()
    numbers["teardown of all three"] = {
        "median_ms": round((time.perf_counter() - started) * 1000, 1),
        "rounds": 1,
    }
    _write("time to ready (local provider)", numbers)


def test_kit_overhead_per_test(apex_worker):
    """What the kit adds to an L2 test that takes `clean_platform` and an auth client and
    makes one request: the reset, the client (the app behind it) and its teardown, each
    round in an event loop of its own, as pytest-asyncio runs each test."""
    platform = InProcessPlatform(apex_worker)

    async def one_test() -> None:
        platform.reset()  # clean_platform
        async with platform.client("auth") as client:
            response = await client.get("/healthz")
        assert response.status_code == 200, response.text

    def one_round() -> None:
        asyncio.run(one_test())

    one_round()  # the first client of a worker pays for what is made once
    try:
        _write("kit overhead per L2 test", {"reset + auth client + 1 request": _measure(one_round)})
    finally:
        platform.close()
