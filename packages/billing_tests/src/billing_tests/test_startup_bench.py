"""Benchmark of apex.billing's start-up, 001#83 (marker perf; `nox -s bench -- -k startup`).

A fresh `python -m apex.billing` process (L3: `platform.start`) is timed from its start to
its first healthy `GET /healthz` and to its first subscription (a free tenant converting
to `early`: the provider's customer, price and subscription made, the invoice booked and
the entitlements published), RUNS times. Numbers go to $APEX_BENCH_DIR/billing.json
(`apex_testkit.bench_report`, section `startup`) and a table on stdout. Only correctness
can fail it (healthy, subscribed), never its speed.
"""

from __future__ import annotations

import statistics
import time
from typing import Final

import httpx
import pytest

from apex_testkit import Level, Platform, bench_report, eventually
from billing_tests.client import MANAGE, READ, MakeUser, subscribe

STARTUP = pytest.mark.bvj(
    segment="platform", goal="A billing instance serves soon after it starts",
    mrr=3000, scenario="001#83",
)  # fmt: skip
pytestmark = [STARTUP, pytest.mark.perf, pytest.mark.L3]

RUNS: Final = 3


async def test_billing_start_to_healthy_and_to_first_subscription(
    clean_platform: Platform, make_billing_user: MakeUser
) -> None:
    healthy: list[float] = []
    subscribed: list[float] = []
    for _ in range(RUNS):
        owner = await make_billing_user(permissions=(READ, MANAGE))
        began = time.perf_counter()
        async with (
            clean_platform.cold_start("billing") as running,
            httpx.AsyncClient(base_url=running.url, timeout=30) as client,
        ):

            async def is_healthy() -> bool:
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(is_healthy, timeout=60, message="billing healthy")
            healthy.append(time.perf_counter() - began)
            response = await subscribe(client, owner, "early")
            assert response.status_code == 200, response.text
            assert response.json()["plan"] == "early"
            subscribed.append(time.perf_counter() - began)
    bench_report(
        "billing",
        "startup",
        {
            "runs": RUNS,
            "start_to_healthy_s_median": statistics.median(healthy),
            "start_to_healthy_s_max": max(healthy),
            "start_to_first_subscription_s_median": statistics.median(subscribed),
            "start_to_first_subscription_s_max": max(subscribed),
        },
        Level.L3,
    )
