"""Benchmarks of apex.agents (marker perf; `nox -s bench -- -k agent`, L3): throughput and
run latency with the provider's scripted latency, memory growth over repeated runs
(001#79), CPU per run (001#80), garbage-collection pauses (001#85), and cold start to the
first agent response (004#1).

The service is a process of its own (`python -m apex.agents`, APEX_AGENTS_WORKERS worker
tasks in it), read from outside: its RSS and CPU time with psutil, its collections from
`apex_agents_gc_pause_seconds` in `/metrics`. Load is closed-loop: LANES clients each
submit a run and wait for its end (one poller reads the runs' ends from PostgreSQL), so
latency is the service's, not a queue's backlog; a run's latency is its `finished_at -
created_at`. Numbers go to a table on stdout and to $APEX_BENCH_DIR/agents.json (default
reports/bench). Only correctness fails a benchmark (every run succeeded with the fake's
answer), and memory: RSS growth over the second 1,000 runs, after a warm-up, above
MAX_GROWTH_PER_RUN bytes per run (notes-agents.md § Tracing, metrics and performance).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from typing import Any

import httpx
import psutil
import pytest

from agent_tests.client import (
    READ_RUNS,
    RUN_AGENTS,
    AgentUser,
    MakeUser,
    final_run,
    submit,
)
from agent_tests.prometheus import Samples, sample, scrape
from apex_testkit import (
    FakeLlm,
    Level,
    Platform,
    RedisNamespace,
    bench_report,
    eventually,
    tls_context,
)

MEMORY = pytest.mark.bvj(
    segment="platform", goal="Agents run for weeks without leaking memory",
    mrr=8000, scenario="001#79",
)  # fmt: skip
CPU = pytest.mark.bvj(
    segment="platform", goal="Agent runs cost little CPU beyond waiting for the model",
    mrr=6000, scenario="001#80",
)  # fmt: skip
GC = pytest.mark.bvj(
    segment="platform", goal="Garbage collection never stalls agent runs",
    mrr=5000, scenario="001#85",
)  # fmt: skip
COLD = pytest.mark.bvj(
    segment="early", goal="A new agents instance answers its first user quickly",
    mrr=10000, scenario="004#1",
)  # fmt: skip
pytestmark = [pytest.mark.perf, pytest.mark.L3]

# The provider's scripted latency per answer (seconds).
LATENCY = 0.05
WORKERS = 8
LANES = 8
WARMUP = 200
BATCH = 1000
# The documented bound: RSS growth of the second 1,000 runs, bytes per run.
MAX_GROWTH_PER_RUN = 4096
COLD_STARTS = 5
# Seconds a context token is used before a new one is minted.
TOKEN_AGE = 30.0
ANSWER = "A benchmark answer."
# What the fake answers unscripted: "Fake answer to: " and the question's first tokens.
DEFAULT_ANSWER = "Fake answer to: Benchmark question"


class FreshUser:
    """A user of one tenant whose context token is never older than TOKEN_AGE seconds
    (context tokens live APEX_CONTEXT_TOKEN_TTL, 60 s: a benchmark outlives one)."""

    def __init__(self, make: MakeUser) -> None:
        self._make = make
        self._user: AgentUser | None = None
        self._minted = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> AgentUser:
        async with self._lock:
            if self._user is None or time.monotonic() - self._minted > TOKEN_AGE:
                tenant = "new" if self._user is None else self._user.tenant_id
                self._user = await self._make(tenant=tenant, permissions=(RUN_AGENTS, READ_RUNS))
                self._minted = time.monotonic()
            return self._user


@pytest.fixture
def runner(make_agent_user: MakeUser) -> FreshUser:
    return FreshUser(make_agent_user)


async def _drive(
    client: httpx.AsyncClient, user: FreshUser, db: Any, count: int, first: int
) -> tuple[float, list[str]]:
    """`count` runs by LANES closed-loop clients; (seconds, run ids)."""
    pending: dict[str, asyncio.Future[None]] = {}
    ids: list[str] = []
    numbers = iter(range(first, first + count))

    async def lane() -> None:
        loop = asyncio.get_running_loop()
        for number in numbers:
            # A distinct input per run: a response cache must not answer it.
            run_id = await submit(client, await user.get(), input=f"Benchmark question {number}?")
            ids.append(run_id)
            done = pending[run_id] = loop.create_future()
            await done

    async def all_done() -> bool:
        if pending:
            rows = await db.fetch(
                "SELECT id::text FROM agent_runs WHERE id = ANY($1::uuid[]) "
                "AND finished_at IS NOT NULL",
                list(pending),
            )
            for (run_id,) in rows:
                pending.pop(run_id).set_result(None)
        return lanes.done()

    started = time.perf_counter()
    lanes = asyncio.gather(*(lane() for _ in range(LANES)))
    try:
        await eventually(all_done, timeout=900, max_interval=0.02, message=f"{count} runs")
        await lanes  # a lane's failure, raised
    finally:
        lanes.cancel()
    return time.perf_counter() - started, ids


async def _latencies(db: Any, ids: list[str]) -> list[float]:
    """Each run's seconds from submit to end; every run succeeded with the answer."""
    rows = await db.fetch(
        "SELECT status, result, extract(epoch FROM finished_at - created_at)::float8 AS s "
        "FROM agent_runs WHERE id = ANY($1::uuid[])",
        ids,
    )
    assert len(rows) == len(ids)
    assert {r["status"] for r in rows} == {"succeeded"}
    assert all(r["result"].startswith(DEFAULT_ANSWER) for r in rows), rows[0]["result"]
    return sorted(r["s"] for r in rows)


def _quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def _gc(before: Samples, after: Samples) -> tuple[float, float]:
    """(collections, pause seconds) between two scrapes, all generations."""
    generations = [str(g) for g in range(3)]
    count = sum(
        sample(after, "apex_agents_gc_pause_seconds_count", generation=g)
        - sample(before, "apex_agents_gc_pause_seconds_count", generation=g)
        for g in generations
    )
    seconds = sum(
        sample(after, "apex_agents_gc_pause_seconds_sum", generation=g)
        - sample(before, "apex_agents_gc_pause_seconds_sum", generation=g)
        for g in generations
    )
    return count, seconds


@MEMORY
@CPU
@GC
async def test_agent_runs_throughput_latency_memory_cpu_and_gc(
    clean_platform: Platform,
    runner: FreshUser,
    fake_llm: FakeLlm,
    agents_db: Any,
    admin_token: str,
    redis_namespace: RedisNamespace,
    apex_level: Level,
) -> None:
    service = clean_platform.instance(
        "agents",
        0,
        APEX_AGENTS_WORKERS=str(WORKERS),
        APEX_REDIS_PREFIX=f"{redis_namespace.prefix}bench-{uuid.uuid4().hex[:8]}:",
        # Limits of later slices, if present, must not be what is measured.
        APEX_TENANT_MAX_RUNNING=str(LANES),
    )
    assert service.pid is not None
    process = psutil.Process(service.pid)
    fake_llm.set_latency(LATENCY)
    async with httpx.AsyncClient(base_url=service.url, timeout=30, verify=tls_context()) as client:
        await _latencies(agents_db, (await _drive(client, runner, agents_db, WARMUP, 0))[1])
        rss = [process.memory_info().rss]
        cpu_before = process.cpu_times()
        gc_before = await scrape(client, admin_token)
        seconds, first_ids = await _drive(client, runner, agents_db, BATCH, WARMUP)
        cpu_after = process.cpu_times()
        gc_after = await scrape(client, admin_token)
        rss.append(process.memory_info().rss)
        second_seconds, second_ids = await _drive(client, runner, agents_db, BATCH, WARMUP + BATCH)
        rss.append(process.memory_info().rss)
    latencies = await _latencies(agents_db, first_ids)
    latencies_second = await _latencies(agents_db, second_ids)
    cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    collections, pauses = _gc(gc_before, gc_after)
    growth = [(rss[1] - rss[0]) / BATCH, (rss[2] - rss[1]) / BATCH]
    bench_report(
        "agents",
        "runs",
        {
            "provider_latency_seconds": LATENCY,
            "worker_tasks": WORKERS,
            "concurrent_clients": LANES,
            "runs": BATCH,
            "runs_per_second": BATCH / seconds,
            "runs_per_second_second_batch": BATCH / second_seconds,
            "latency_p50_seconds": _quantile(latencies, 0.50),
            "latency_p99_seconds": _quantile(latencies, 0.99),
            "latency_p50_seconds_second_batch": _quantile(latencies_second, 0.50),
            "latency_p99_seconds_second_batch": _quantile(latencies_second, 0.99),
            "rss_bytes_after_warmup": rss[0],
            "rss_growth_bytes_per_run_first_1000": growth[0],
            "rss_growth_bytes_per_run_second_1000": growth[1],
            "rss_growth_bytes_per_1000_runs_second": growth[1] * BATCH,
            "cpu_seconds_per_run": cpu / BATCH,
            "cpu_utilisation_of_one_core": cpu / seconds,
            "gc_collections_per_1000_runs": collections,
            "gc_pause_seconds_per_1000_runs": pauses,
            "gc_pause_share_of_wall_time": pauses / seconds,
        },
        apex_level,
    )
    assert growth[1] <= MAX_GROWTH_PER_RUN, (
        f"RSS grew {growth[1]:.0f} bytes per run over the second {BATCH} runs "
        f"(bound {MAX_GROWTH_PER_RUN}): {rss}"
    )


@COLD
async def test_cold_start_to_the_first_agent_response(
    clean_platform: Platform,
    runner: FreshUser,
    fake_llm: FakeLlm,
    redis_namespace: RedisNamespace,
    apex_level: Level,
) -> None:
    healthy: list[float] = []
    answered: list[float] = []
    for _ in range(COLD_STARTS):
        fake_llm.reply(ANSWER)
        settings = {
            "APEX_AGENTS_WORKERS": "1",
            "APEX_REDIS_PREFIX": f"{redis_namespace.prefix}cold-{uuid.uuid4().hex[:8]}:",
        }
        user = await runner.get()
        started = time.perf_counter()
        async with (
            clean_platform.cold_start("agents", **settings) as fresh,
            httpx.AsyncClient(base_url=fresh.url, timeout=30, verify=tls_context()) as client,
        ):
            healthy.append(time.perf_counter() - started)
            run = await final_run(client, user, await submit(client, user))
            answered.append(time.perf_counter() - started)
        assert (run["status"], run["result"]) == ("succeeded", ANSWER)
    bench_report(
        "agents",
        "cold_start",
        {
            "starts": COLD_STARTS,
            "to_healthy_seconds_median": statistics.median(healthy),
            "to_first_response_seconds_median": statistics.median(answered),
            "to_first_response_seconds_min": min(answered),
            "to_first_response_seconds_max": max(answered),
        },
        apex_level,
    )
