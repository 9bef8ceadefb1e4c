"""001#81 network latency compensation: high latency and jitter between clients and the
gateway (the kit's fault proxy) must not reorder, lose or duplicate anything, and must not
get healthy connections reaped as long as the round trip fits the ping timeout; a round
trip beyond it is detected. Latencies are measured and printed, never pass/fail.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable

import pytest

from apex_testkit import FaultProxy, eventually
from ws_tests.client import Connect, stays_open
from ws_tests.gateways import Gateways, http_url, metric
from ws_tests.users import MakeUser, WsUser

LATENCY = pytest.mark.bvj(
    segment="enterprise", goal="International users on slow links get every message in order",
    mrr=9000, scenario="001#81",
)  # fmt: skip
pytestmark = [LATENCY, pytest.mark.L3]


async def test_messages_stay_ordered_and_complete_over_a_slow_jittery_link(
    gateways: Gateways,
    ws_open: Connect,
    make_ws_user: MakeUser,
    fault_proxy: Callable[[str], FaultProxy],
) -> None:
    gateway = await gateways.start(APEX_WS_RATE="1000/1")
    proxy = fault_proxy(http_url(gateway.url))
    sender, user = await make_ws_user(), await make_ws_user()
    far_sender = await ws_open(proxy.url_for(gateway.url), sender.token)
    far_tab = await ws_open(proxy.url_for(gateway.url), user.token)
    near_tab = await ws_open(gateway.url, user.token)
    proxy.latency(150, jitter_ms=100)

    ids = [
        await far_sender.send("publish", id=f"m{n}", to=f"user:{user.user_id}", data={"n": n})
        for n in range(40)
    ]
    started = time.monotonic()
    far = await far_tab.messages(40, timeout=60)
    far_elapsed = time.monotonic() - started
    near = await near_tab.messages(40, timeout=60)
    acks = [await far_sender.expect("ack", id=i, timeout=60) for i in ids]

    assert len(acks) == 40
    for frames in (far, near):
        assert [f["data"]["n"] for f in frames] == list(range(40))
        assert [f["id"] for f in frames] == ids
    assert [f["seq"] for f in far] == [f["seq"] for f in near]
    assert [f["seq"] for f in far] == list(range(far[0]["seq"], far[0]["seq"] + 40))
    rtts = []
    for _ in range(5):
        begin = time.monotonic()
        assert (await far_tab.request("ping", timeout=30))["type"] == "pong"
        rtts.append(time.monotonic() - begin)
    print(
        f"\n001#81 via 150±100 ms each way: 40 messages in {far_elapsed:.2f} s, "
        f"app ping RTT median {statistics.median(rtts) * 1000:.0f} ms"
    )


async def test_slow_link_within_the_ping_timeout_keeps_the_connection(
    gateways: Gateways,
    ws_open: Connect,
    ws_user: WsUser,
    fault_proxy: Callable[[str], FaultProxy],
) -> None:
    gateway = await gateways.start(APEX_WS_PING_INTERVAL="0.2", APEX_WS_PING_TIMEOUT="1.5")
    proxy = fault_proxy(http_url(gateway.url))
    client = await ws_open(proxy.url_for(gateway.url), ws_user.token)
    before = metric(await gateway.metrics(), "apex_gateway_reaped_total")
    proxy.latency(150, jitter_ms=50)  # round trip ~0.3 s, well inside the 1.5 s timeout

    await stays_open(client, 2.5)  # five pings or more, each answered late

    assert metric(await gateway.metrics(), "apex_gateway_reaped_total") == before


async def test_round_trip_beyond_the_ping_timeout_is_detected_and_reaped(
    gateways: Gateways,
    ws_open: Connect,
    ws_user: WsUser,
    fault_proxy: Callable[[str], FaultProxy],
) -> None:
    gateway = await gateways.start(APEX_WS_PING_INTERVAL="0.5", APEX_WS_PING_TIMEOUT="0.5")
    proxy = fault_proxy(http_url(gateway.url))
    client = await ws_open(proxy.url_for(gateway.url), ws_user.token)
    before = metric(await gateway.metrics(), "apex_gateway_reaped_total")

    proxy.latency(1500)  # each way: no pong can make it in time

    async def reaped() -> bool:
        return metric(await gateway.metrics(), "apex_gateway_reaped_total") > before

    await eventually(reaped, timeout=10, message="slow connection reaped")
    await asyncio.wait_for(client.closed(timeout=20), 25)
