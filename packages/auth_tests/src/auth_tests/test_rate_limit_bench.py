"""Benchmarks of the per-user API rate limit's sliding window (marker perf; `nox -s bench`,
or `pytest --pyargs auth_tests --perf -m perf -s`).

002#5 as a clock sees it: how long after the first request of a full window the budget
comes back (the window, 2 s here, not less), and, hammering for two and a half windows,
the most requests accepted within any one window length (never more than the limit: a
fixed window would let twice the limit through around each boundary). Numbers go to a
table on stdout and to $APEX_BENCH_DIR/auth.json (`apex_testkit.bench_report`). Only the
window's correctness can fail a benchmark, never its speed; the normal run
(test_rate_limits.py) waits on conditions and reads no clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from apex_testkit import Level, Platform, bench_report
from auth_tests.client import AuthAdmin, Tokens, login

WINDOWS = pytest.mark.bvj(
    segment="platform", goal="Platform protection: sliding windows, exact bursts", mrr=75000,
    scenario="002#5",
)  # fmt: skip
pytestmark = [pytest.mark.perf, pytest.mark.L2, pytest.mark.L3, WINDOWS]

LIMIT, WINDOW = 5, 2
# The test's clock and Redis's may disagree by this much.
CLOCK_SLACK = 0.05


@pytest.fixture
async def limited(clean_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """apex.auth whose free tier allows LIMIT requests per WINDOW seconds."""
    rates = f"free={LIMIT}/{WINDOW},pro=50/{WINDOW},enterprise=500/{WINDOW}"
    async with clean_platform.client("auth", APEX_API_RATE_LIMITS=rates) as client:
        yield client


async def _free_user(client: httpx.AsyncClient, admin_token: str) -> Tokens:
    owner = await AuthAdmin(client, admin_token).key_user(tier="free")
    return await login(client, owner.api_key)


async def test_bench_the_budget_comes_back_after_the_window(
    limited: httpx.AsyncClient, admin_token: str, apex_level: Level
) -> None:
    tokens = await _free_user(limited, admin_token)
    started = time.monotonic()
    for _ in range(LIMIT):
        assert (await limited.get("/me", headers=tokens.bearer)).status_code == 200
    refused = await limited.get("/me", headers=tokens.bearer)
    assert refused.status_code == 429, refused.text

    polls = 0
    while True:  # a measurement, polled slower than the limit so as not to fill the window
        polls += 1
        response = await limited.get("/me", headers=tokens.bearer)
        if response.status_code == 200:
            break
        assert response.status_code == 429, response.text
        assert time.monotonic() - started < WINDOW * 10, "the budget never came back"
        await asyncio.sleep(0.1)  # the measurement's polling interval, not a synchronisation
    back_after = time.monotonic() - started

    bench_report(
        "auth",
        "sliding_window_recovery",
        {
            "window_s": float(WINDOW),
            "limit": LIMIT,
            "budget_back_after_s": back_after,
            "retry_after_header_s": int(refused.headers["Retry-After"]),
            "polls_refused": polls - 1,
        },
        apex_level,
    )
    assert back_after >= WINDOW - CLOCK_SLACK, f"budget back after {back_after:.3f} s"


async def test_bench_no_window_ever_holds_more_than_the_limit(
    limited: httpx.AsyncClient, admin_token: str, apex_level: Level
) -> None:
    tokens = await _free_user(limited, admin_token)
    duration = WINDOW * 2.5
    accepted: list[tuple[float, float]] = []  # (sent, answered) of each accepted request
    refused = 0
    end = time.monotonic() + duration
    while time.monotonic() < end:
        sent = time.monotonic()
        response = await limited.get("/me", headers=tokens.bearer)
        assert response.status_code in (200, 429), response.text  # both are the window's
        if response.status_code == 200:
            accepted.append((sent, time.monotonic()))
        else:
            refused += 1

    # The most accepted requests that were certainly counted within one window length:
    # from the first one's sending to the last one's answer, less than a window.
    most = max(
        sum(1 for later in accepted[i:] if later[1] - first[0] < WINDOW - CLOCK_SLACK)
        for i, first in enumerate(accepted)
    )
    bench_report(
        "auth",
        "sliding_window_hammer",
        {
            "window_s": float(WINDOW),
            "limit": LIMIT,
            "duration_s": duration,
            "accepted": len(accepted),
            "refused": refused,
            "most_accepted_in_one_window": most,
        },
        apex_level,
    )
    assert len(accepted) >= 2 * LIMIT, "the window never slid (do refusals keep it full?)"
    assert most <= LIMIT, f"{most} requests accepted within one {WINDOW} s window"
