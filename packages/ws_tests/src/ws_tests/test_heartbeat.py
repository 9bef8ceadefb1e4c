"""001#28 heartbeat mechanism and 003 "WS heartbeat and zombie" detection.

The rules under test (CONTRACT4, ping): the gateway pings every APEX_WS_PING_INTERVAL and
reaps a connection whose pong does not come within APEX_WS_PING_TIMEOUT: closed, counted
in apex_gateway_reaped_total, removed from the connection counts and from the user's
leader set (the next oldest tab becomes leader). A client that answers stays, however
long it is idle. A zombie is made two ways: a client that stops reading its socket, and
a network that swallows everything (the fault proxy's blackhole).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from apex_testkit import FaultProxy, eventually
from ws_tests.client import Connect, freeze, stays_open, thaw
from ws_tests.gateways import GatewayHandle, Gateways, http_url, metric
from ws_tests.messages import BROADCAST_PERMISSION
from ws_tests.users import MakeUser, WsUser

HEARTBEAT = pytest.mark.bvj(
    segment="platform", goal="Connection liveness: dead sockets are found and freed",
    mrr=6000, scenario="001#28",
)  # fmt: skip
ZOMBIES = pytest.mark.bvj(
    segment="platform", goal="Zombie connections never pile up nor keep leadership",
    mrr=50000, scenario="003:WS heartbeat and zombie",
)  # fmt: skip

# Pings often, so a zombie is found within 0.6 s; the pong deadline stays what it was (a
# healthy client's answer on a loaded machine: at L2 the client shares the gateway's loop).
INTERVAL, TIMEOUT = 0.1, 0.5
FAST_PINGS = {"APEX_WS_PING_INTERVAL": str(INTERVAL), "APEX_WS_PING_TIMEOUT": str(TIMEOUT)}
# A zombie must be gone within interval + timeout; the slack covers scheduling and polling.
REAP_WITHIN = INTERVAL + TIMEOUT + 2.0


async def _reaped(gateway: GatewayHandle) -> float:
    return metric(await gateway.metrics(), "apex_gateway_reaped_total")


async def _reaped_reaches(gateway: GatewayHandle, value: float) -> None:
    async def reached() -> bool:
        return await _reaped(gateway) >= value

    await eventually(reached, timeout=REAP_WITHIN, message=f"reaped_total >= {value}")


@pytest.mark.L2
@pytest.mark.L3
@HEARTBEAT
async def test_welcome_announces_the_heartbeat_and_app_pings_are_answered(
    gateways: Gateways, ws_open: Connect, ws_user: WsUser
) -> None:
    gateway = await gateways.start(**FAST_PINGS)
    client = await ws_open(gateway.url, ws_user.token)

    assert client.welcome["heartbeat"] == {"interval": INTERVAL, "timeout": TIMEOUT}
    assert await client.request("ping", id="hb-1") == {"type": "pong", "id": "hb-1"}


@pytest.mark.L2
@pytest.mark.L3
@HEARTBEAT
@pytest.mark.slow
async def test_client_that_stops_answering_pings_is_reaped_and_a_healthy_one_stays(
    gateways: Gateways, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    gateway = await gateways.start(**FAST_PINGS)
    healthy = await ws_open(gateway.url, (await make_ws_user()).token)
    zombie = await ws_open(gateway.url, (await make_ws_user()).token)
    before = await _reaped(gateway)
    assert await gateway.connections() == 2

    loop = asyncio.get_running_loop()
    freeze(zombie)
    frozen_at = loop.time()
    await _reaped_reaches(gateway, before + 1)

    assert await _reaped(gateway) == before + 1  # the zombie only
    assert await gateway.connections() == 1
    thaw(zombie)
    await zombie.closed(timeout=10)  # its socket is gone (close code is the library's)
    # The healthy client, idle all along, is still there two reaping deadlines after the
    # zombie froze: it answered every ping of them (the zombie's reaping took one of them).
    await stays_open(healthy, frozen_at + 2 * (INTERVAL + TIMEOUT) - loop.time())
    assert await _reaped(gateway) == before + 1


@pytest.mark.L2
@pytest.mark.L3
@HEARTBEAT
async def test_reaped_leader_hands_leadership_to_the_next_tab(
    gateways: Gateways, ws_open: Connect, ws_user: WsUser
) -> None:
    gateway = await gateways.start(**FAST_PINGS)
    oldest = await ws_open(gateway.url, ws_user.token)
    second = await ws_open(gateway.url, ws_user.token)
    assert (oldest.welcome["leader"], second.welcome["leader"]) == (True, False)

    freeze(oldest)

    await second.expect("leader", timeout=REAP_WITHIN + 1)
    third = await ws_open(gateway.url, ws_user.token)
    assert third.welcome["leader"] is False  # `second` leads now, not the dead tab


@pytest.mark.L3
@ZOMBIES
async def test_network_blackhole_makes_a_zombie_that_is_reaped_and_loses_leadership(
    gateways: Gateways,
    ws_open: Connect,
    ws_user: WsUser,
    fault_proxy: Callable[[str], FaultProxy],
) -> None:
    gateway = await gateways.start(**FAST_PINGS)
    proxy = fault_proxy(http_url(gateway.url))
    behind_proxy = await ws_open(proxy.url_for(gateway.url), ws_user.token)
    direct = await ws_open(gateway.url, ws_user.token)
    assert behind_proxy.welcome["leader"] is True
    before = await _reaped(gateway)

    proxy.blackhole()  # nothing gets through either way, no FIN, no RST: a dead network

    await direct.expect("leader", timeout=REAP_WITHIN + 1)
    await _reaped_reaches(gateway, before + 1)
    assert await gateway.connections() == 1

    async def listed() -> bool:  # /instances is refreshed by the registry heartbeat
        mine = [i for i in await gateway.instances() if i["id"] == direct.welcome["instance"]]
        return [i["connections"] for i in mine] == [1]

    await eventually(listed, timeout=10, message="/instances counts the living only")


@pytest.mark.L3
@ZOMBIES
async def test_a_crowd_of_zombies_is_reaped_exactly_and_the_living_are_kept(
    gateways: Gateways, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    gateway = await gateways.start(**FAST_PINGS)
    # The last one (living) broadcasts at the end.
    users = [await make_ws_user() for _ in range(9)]
    users.append(await make_ws_user(permissions=[BROADCAST_PERMISSION]))
    clients = await asyncio.gather(*(ws_open(gateway.url, u.token) for u in users))
    zombies, living = clients[:5], clients[5:]
    before = await _reaped(gateway)

    for zombie in zombies:
        freeze(zombie)
    await _reaped_reaches(gateway, before + 5)

    await stays_open(living[0], INTERVAL + TIMEOUT)
    assert await _reaped(gateway) == before + 5
    assert await gateway.connections() == 5
    for client in living:
        assert (await client.request("ping"))["type"] == "pong"
    # Fan-out skips the dead: a broadcast reaches exactly the living.
    reply = await living[-1].request("publish", to="broadcast", data={"alive": True})
    assert reply["type"] == "ack"
    for client in living:
        assert (await client.expect("message"))["data"] == {"alive": True}
