"""Throughput benchmarks of apex.billing's two inputs (marker perf; `nox -s bench --
-k throughput_bench`): metered usage events per second into ClickHouse (001#97) and provider
webhooks processed per second (001#98), at L3 (every service its own process).

Metering: APEX_BENCH_USAGE_EVENTS (2,000) cost records are appended to the Redis stream
`<prefix>agents:costs`, the way stage 6 of an agent's LLM call appends them
(notes-agents.md § Costs and degradation), and timed from the first append to the moment
billing's `GET /v1/billing/usage` (ClickHouse, notes-billing.md § Metering) counts all of
them: apex.agents' delivery to apex.data, the outbox, the relay and ClickHouse. Then a
fifth of them are appended again (retried deliveries) and one new marker record behind
them: once the marker is counted, the count is the events + 1, the lines are what was
sent, and the admin check agrees with the raw records.

Webhooks: APEX_BENCH_WEBHOOKS (1,000) signed events (copies, under new ids, of the events
the provider made for two real conversions: customers, invoices paid, charges,
subscriptions) are posted by SENDERS concurrent senders to `POST /v1/billing/webhooks`;
each must be 200 and new. Then a fifth of them are posted again (signed anew, as the
provider's retries are): each is 200 `duplicate`, and the processed events, the ledgers
and the subscriptions are unchanged.

Numbers go to $APEX_BENCH_DIR/billing.json (sections `metering`, `webhooks`) with the
machine's cores and load, and to a table on stdout. Only correctness can fail these,
never their speed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import os
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

import httpx
import pytest
from auth_tests.access import context_token

from apex_testkit import (
    FakePayments,
    Level,
    RedisNamespace,
    bench_report,
    eventually,
    stripe_signature,
)
from billing_tests.client import (
    AUDIENCE,
    MANAGE,
    READ,
    BillingUser,
    MakeUser,
    cents_of,
    ledger_of,
    sdk,
    subscribe,
    subscription_of,
    tenant_of,
    usage_check,
    usage_of,
)

METERING = pytest.mark.bvj(
    segment="enterprise", goal="Tenants are billed exactly what they used, once",
    mrr=20000, scenario="001#97",
)  # fmt: skip
WEBHOOKS = pytest.mark.bvj(
    segment="enterprise", goal="Payments the provider reports are applied once, and only theirs",
    mrr=20000, scenario="001#98",
)  # fmt: skip
pytestmark = [pytest.mark.perf, pytest.mark.L3]

# Appended in pipelines of this many entries (one round trip each).
APPEND_CHUNK: Final = 500
# Records of one run: its LLM calls 1..CALLS_PER_RUN (idempotency key run:main:call).
CALLS_PER_RUN: Final = 10
LABELS: Final = (("writer", "gpt-4o-mini"), ("planner", "gpt-4o"))
# The usage period of the records, one second apart from its start (at most a day's).
PERIOD: Final = ("2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z")
START: Final = datetime.datetime(2026, 3, 1, tzinfo=datetime.UTC)
MOST_EVENTS: Final = 86_399
# Generous: a shared 2-core machine (the delivery was one POST per record: ~50-180/s).
DEADLINE: Final = 300.0
# The longest pause between two looks at the count (each look mints a context token).
POLL: Final = 0.25
SENDERS: Final = 4
CONVERSIONS: Final = 2


def size(name: str, default: int, most: int) -> int:
    """The whole number 1..most in env `name` (default `default`); a clear error otherwise."""
    raw = os.environ.get(name, str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise ValueError(f"{name}={raw!r}: expected a whole number from 1 to {most}")
    return int(raw)


def cost_entry(user: BillingUser, index: int) -> dict[str, str]:
    """Record `index` of the run, as stage 6 of an LLM call appends it to the stream."""
    # The SUT's record type: the stream's field names are its format, not the contract's.
    from apex.agents.cost_records import CostRecord  # noqa: PLC0415 - the SUT's helper

    agent, model = LABELS[index % len(LABELS)]
    record = CostRecord(
        tenant_id=tenant_of(user),
        user_id=user.key_user.user_id,
        run_id=f"bench-{index // CALLS_PER_RUN:05d}",
        step="main",
        call=index % CALLS_PER_RUN + 1,
        agent=agent,
        model=model,
        provider="llm",
        prompt_tokens=100 + index % 7,
        completion_tokens=20 + index % 5,
        cost_micros=1_000 + index % 13,
        occurred_at=(START + datetime.timedelta(seconds=index)).isoformat(),
    )
    return record.fields()


def expected_lines(entries: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The usage lines of these entries by the contract's rule (kind llm, per agent and
    model: quantity prompt + completion tokens, cost, events, price rounded up per line)."""
    sums: dict[tuple[str, str], list[int]] = {}
    for entry in entries:
        line = sums.setdefault((entry["agent"], entry["model"]), [0, 0, 0])
        line[0] += int(entry["prompt_tokens"]) + int(entry["completion_tokens"])
        line[1] += int(entry["cost_micros"])
        line[2] += 1
    return [
        {
            "kind": "llm",
            "agent": agent,
            "model": model,
            "quantity": quantity,
            "cost_micros": cost,
            "events": events,
            "price": {"amount": cents_of(cost), "currency": "usd"},
        }
        for (agent, model), (quantity, cost, events) in sorted(sums.items())
    ]


async def append(redis: Any, stream: str, entries: list[dict[str, str]]) -> None:
    """XADD each entry to `stream`, in order, in pipelines of APPEND_CHUNK."""
    for start in range(0, len(entries), APPEND_CHUNK):
        async with redis.pipeline(transaction=False) as pipe:
            for entry in entries[start : start + APPEND_CHUNK]:
                pipe.xadd(stream, entry)
            await pipe.execute()


def events_of(usage: dict[str, Any]) -> int:
    """The events counted in a usage document."""
    return sum(line["events"] for line in usage["lines"])


@METERING
async def test_metered_events_per_second_into_clickhouse(
    billing_client: httpx.AsyncClient,
    billing_agents_client: httpx.AsyncClient,
    billing_auth_client: httpx.AsyncClient,
    billing_redis: Any,
    redis_namespace: RedisNamespace,
    make_billing_user: MakeUser,
    admin_token: str,
) -> None:
    # billing_agents_client: apex.agents' process runs the delivery from the stream.
    assert (await billing_agents_client.get("/healthz")).status_code == 200
    load_before = round(os.getloadavg()[0], 2)
    events = size("APEX_BENCH_USAGE_EVENTS", 2_000, MOST_EVENTS)
    duplicates = max(1, events // 5)
    user = await make_billing_user(permissions=(READ,))
    stream = f"{redis_namespace.prefix}agents:costs"
    entries = [cost_entry(user, index) for index in range(events)]
    drained: list[float] = []

    async def counted(
        began: float, done: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any] | None:
        if not drained and await billing_redis.xlen(stream) == 0:
            drained.append(time.perf_counter() - began)
        # A context token lives 60 s (APEX_CONTEXT_TOKEN_TTL): a fresh one per look.
        token = await context_token(billing_auth_client, user.tokens, AUDIENCE)
        reader = dataclasses.replace(user, token=token)
        usage = await usage_of(billing_client, reader, *PERIOD)
        return usage if done(usage) else None

    async def metered(
        began: float, done: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        """The usage once `done(usage)` (DEADLINE)."""
        usage = await eventually(
            lambda: counted(began, done), timeout=DEADLINE, max_interval=POLL, message=what
        )
        assert usage is not None  # eventually returns a truthy value
        return usage

    began = time.perf_counter()
    await append(billing_redis, stream, entries)
    appended = time.perf_counter() - began
    first = await metered(
        began, lambda usage: events_of(usage) >= events, f"{events} events metered"
    )
    elapsed = time.perf_counter() - began
    assert events_of(first) == events
    assert first["lines"] == expected_lines(entries)
    stream_drained = drained[0] if drained else elapsed

    # Retried deliveries of a slice, then one new record behind them: once the marker is
    # counted, every duplicate before it went through the pipeline too.
    marker = {**cost_entry(user, events), "agent": "marker"}
    drained.clear()
    again = time.perf_counter()
    await append(billing_redis, stream, [*entries[:duplicates], marker])
    second = await metered(
        again, lambda usage: any(x["agent"] == "marker" for x in usage["lines"]), "the marker"
    )
    duplicates_elapsed = time.perf_counter() - again
    assert events_of(second) == events + 1
    assert second["lines"] == expected_lines([*entries, marker])
    check = await usage_check(billing_client, admin_token, tenant_of(user), *PERIOD)
    assert (check["ok"], check["events"], check["mismatches"]) == (True, events + 1, [])
    assert await billing_redis.xlen(f"{stream}:dead") == 0

    bench_report(
        "billing",
        "metering",
        {
            "path": "redis stream agents:costs -> apex.data -> outbox relay -> ClickHouse",
            "events": events,
            "append_s": appended,
            "stream_drained_s": stream_drained,
            "counted_in_clickhouse_s": elapsed,
            "events_per_s": events / elapsed,
            "duplicates": duplicates,
            "duplicates_and_marker_counted_s": duplicates_elapsed,
            "duplicates_per_s": duplicates / duplicates_elapsed,
            "count_after_duplicates": events_of(second),
            "loadavg_1min_before": load_before,
        },
        Level.L3,
    )


async def post_all(
    client: httpx.AsyncClient, payloads: list[bytes], secret: str
) -> list[tuple[int, bool, float]]:
    """POST each payload, signed now, from SENDERS concurrent senders: (status, duplicate,
    seconds) per payload, in order."""
    results: list[tuple[int, bool, float]] = [(0, False, 0.0)] * len(payloads)
    queue = iter(range(len(payloads)))

    async def sender() -> None:
        for index in queue:  # one shared iterator: each payload sent once
            payload = payloads[index]
            headers = {
                "stripe-signature": stripe_signature(payload, secret, int(time.time())),
                "content-type": "application/json",
            }
            began = time.perf_counter()
            response = await client.post("/v1/billing/webhooks", content=payload, headers=headers)
            took = time.perf_counter() - began
            duplicate = response.status_code == 200 and response.json()["duplicate"] is True
            results[index] = (response.status_code, duplicate, took)

    await asyncio.gather(*(sender() for _ in range(SENDERS)))
    return results


def quantile(values: list[float], q: int) -> float:
    """The q-th percentile of `values` (inclusive method)."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def processed(db: Any) -> dict[str, int]:
    """The processed events by type (billing_events)."""
    rows = await db.fetch("SELECT type, count(*) AS n FROM billing_events GROUP BY type")
    return {row["type"]: row["n"] for row in rows}


@WEBHOOKS
async def test_webhooks_processed_per_second(
    billing_client: httpx.AsyncClient,
    make_billing_user: MakeUser,
    fake_payments: FakePayments,
    billing_db: Any,
) -> None:
    load_before = round(os.getloadavg()[0], 2)
    count = size("APEX_BENCH_WEBHOOKS", 1_000, 100_000)
    replays_sent = max(1, count // 5)
    owners = [await make_billing_user(permissions=(READ, MANAGE)) for _ in range(CONVERSIONS)]
    for owner in owners:
        assert (await subscribe(billing_client, owner, "early")).status_code == 200
    # What the provider made for the conversions (customers, payment methods, invoices
    # paid, charges, subscriptions): each delivered under a new id, round robin.
    templates = [
        event.to_dict(recursive=True)
        for event in sdk(fake_payments).v1.events.list(params={"limit": 100}).data
    ]
    assert any(t["type"] == "invoice.paid" for t in templates), templates
    run = uuid.uuid4().hex[:8]
    payloads = [
        json.dumps({**templates[i % len(templates)], "id": f"evt_bench_{run}_{i:05d}"}).encode()
        for i in range(count)
    ]
    mix = Counter(templates[i % len(templates)]["type"] for i in range(count))
    before = await processed(billing_db)
    ledgers = [await ledger_of(billing_db, owner) for owner in owners]
    states = [await subscription_of(billing_client, owner) for owner in owners]
    # Each conversion's first invoice is booked once: debit cash, credit deferred revenue.
    assert [[row[1:] for row in ledger] for ledger in ledgers] == [
        [("cash", 2900, 0), ("deferred_revenue", 0, 2900)]
    ] * CONVERSIONS

    began = time.perf_counter()
    results = await post_all(billing_client, payloads, fake_payments.webhook_secret)
    elapsed = time.perf_counter() - began
    assert [(status, duplicate) for status, duplicate, _ in results] == [(200, False)] * count
    after = await processed(billing_db)
    assert Counter(after) - Counter(before) == mix

    replays = await post_all(billing_client, payloads[:replays_sent], fake_payments.webhook_secret)
    assert [(status, duplicate) for status, duplicate, _ in replays] == [(200, True)] * replays_sent
    assert await processed(billing_db) == after
    # Invoices paid again under new ids and their replays booked nothing twice; the
    # subscriptions are as the provider has them.
    assert [await ledger_of(billing_db, owner) for owner in owners] == ledgers
    assert [await subscription_of(billing_client, owner) for owner in owners] == states

    latencies = [took for _, _, took in results]
    replay_latencies = [took for _, _, took in replays]
    bench_report(
        "billing",
        "webhooks",
        {
            "events": count,
            "senders": SENDERS,
            "mix": dict(sorted(mix.items())),
            "seconds": elapsed,
            "processed_per_s": count / elapsed,
            "latency_ms_p50": 1000 * statistics.median(latencies),
            "latency_ms_p99": 1000 * quantile(latencies, 99),
            "replays": replays_sent,
            "replay_latency_ms_p50": 1000 * statistics.median(replay_latencies),
            "replay_latency_ms_p99": 1000 * quantile(replay_latencies, 99),
            "loadavg_1min_before": load_before,
        },
        Level.L3,
    )
