"""001#25 connection pool management: pool sizing, idle cleanup, burst handling.

The rules under test (CONTRACT4): a user holds at most APEX_WS_MAX_CONNECTIONS_PER_USER
connections on all instances together (429 `too_many_connections` beyond), however many
handshakes arrive at once; /healthz (and /instances) count the instance's connections;
connections that stop answering pings are reaped and give their slot back, while idle but
healthy ones are kept.
"""

from __future__ import annotations

import asyncio

import pytest

from apex_testkit import RedisNamespace, eventually
from ws_tests.client import Connect, HandshakeRefused, WsClient, freeze, stays_open
from ws_tests.gateways import GatewayHandle, Gateways
from ws_tests.users import MakeUser, WsUser

POOL = pytest.mark.bvj(
    segment="platform", goal="Resource efficiency: bounded, self-cleaning connection pools",
    mrr=7000, scenario="001#25",
)  # fmt: skip
pytestmark = [POOL, pytest.mark.L2, pytest.mark.L3]


async def _count_becomes(gateway: GatewayHandle, expected: int, timeout: float = 5) -> None:
    async def reached() -> bool:
        return await gateway.connections() == expected

    await eventually(reached, timeout=timeout, message=f"healthz connections == {expected}")


async def test_one_user_fills_the_pool_up_to_the_limit_and_no_further(
    gateways: Gateways, ws_open: Connect, ws_user: WsUser
) -> None:
    gateway = await gateways.start(
        APEX_WS_MAX_CONNECTIONS_PER_USER="10",
        APEX_WS_INSTANCE_TTL="1.5",  # /instances is refreshed every 0.5 s, not every 1.7 s
    )

    tabs = await asyncio.gather(*(ws_open(gateway.url, ws_user.token) for _ in range(10)))

    assert len({t.welcome["connection_id"] for t in tabs}) == 10
    assert sum(t.welcome["leader"] for t in tabs) == 1
    await _count_becomes(gateway, 10)

    async def listed() -> bool:  # /instances is refreshed by the registry heartbeat
        mine = [i for i in await gateway.instances() if i["id"] == tabs[0].welcome["instance"]]
        return [i["connections"] for i in mine] == [10]

    await eventually(listed, timeout=10, message="/instances counts 10 connections")
    with pytest.raises(HandshakeRefused) as refused:
        await ws_open(gateway.url, ws_user.token)
    assert (refused.value.status, refused.value.body["error"]) == (429, "too_many_connections")
    for tab in tabs:
        assert (await tab.request("ping"))["type"] == "pong"


async def test_a_burst_of_connections_is_admitted_and_released(
    gateways: Gateways, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    gateway = await gateways.start()
    users = list(await asyncio.gather(*(make_ws_user() for _ in range(20))))

    clients = await asyncio.gather(*(ws_open(gateway.url, u.token) for u in users * 2))

    assert {c.user_id for c in clients} == {u.user_id for u in users}
    await _count_becomes(gateway, 40)
    # Each user: two tabs, exactly one leader.
    for user in users:
        mine = [c for c in clients if c.user_id == user.user_id]
        assert sorted(c.welcome["leader"] for c in mine) == [False, True]

    await asyncio.gather(*(c.close() for c in clients))
    await _count_becomes(gateway, 0)


async def test_dead_connections_are_reaped_and_give_their_slots_back(
    gateways: Gateways, ws_open: Connect, ws_user: WsUser, make_ws_user: MakeUser
) -> None:
    gateway = await gateways.start(
        APEX_WS_MAX_CONNECTIONS_PER_USER="3",
        APEX_WS_PING_INTERVAL="0.1",  # the dead are found within 0.6 s
        APEX_WS_PING_TIMEOUT="0.5",
    )
    dead = [await ws_open(gateway.url, ws_user.token) for _ in range(3)]
    idle = await ws_open(gateway.url, (await make_ws_user()).token)  # never sends anything
    with pytest.raises(HandshakeRefused):
        await ws_open(gateway.url, ws_user.token)

    loop = asyncio.get_running_loop()
    for client in dead:
        freeze(client)
    frozen_at = loop.time()
    await _count_becomes(gateway, 1, timeout=10)

    # The pool freed the user's slots: three new tabs fit again.
    fresh = [await ws_open(gateway.url, ws_user.token) for _ in range(3)]
    assert sum(t.welcome["leader"] for t in fresh) == 1
    await _count_becomes(gateway, 4)
    # idle is not dead: it answers pings (ten of them in the second since the others froze)
    await stays_open(idle, frozen_at + 1.0 - loop.time())


def _tabs_in_redis(redis_namespace: RedisNamespace, user_id: str) -> int:
    """How many tabs (connections) of the user the shared registry holds."""
    redis = redis_namespace.client()
    try:
        return int(redis.zcard(f"{redis_namespace.prefix}ws:tabs:{user_id}"))
    finally:
        redis.close()


async def _attempt(ws_open: Connect, url: str, token: str) -> WsClient | HandshakeRefused:
    try:
        return await ws_open(url, token)
    except HandshakeRefused as refused:
        return refused


async def test_parallel_handshakes_on_two_instances_never_exceed_the_per_user_limit(
    gateways: Gateways, ws_open: Connect, ws_user: WsUser, redis_namespace: RedisNamespace
) -> None:
    limit = "3"
    first = await gateways.start(APEX_WS_MAX_CONNECTIONS_PER_USER=limit)
    second = await gateways.start(APEX_WS_MAX_CONNECTIONS_PER_USER=limit)

    outcomes = await asyncio.gather(
        *(_attempt(ws_open, (first, second)[n % 2].url, ws_user.token) for n in range(12))
    )

    admitted = [o for o in outcomes if isinstance(o, WsClient)]
    refused = [o for o in outcomes if isinstance(o, HandshakeRefused)]
    assert len(admitted) == 3, f"{len(admitted)} connections admitted for a limit of 3"
    assert [(r.status, r.body["error"]) for r in refused] == [(429, "too_many_connections")] * 9
    assert _tabs_in_redis(redis_namespace, ws_user.user_id) == 3
    on_first = sum(1 for c in admitted if c.welcome["instance"] == admitted[0].welcome["instance"])
    counts = sorted([await first.connections(), await second.connections()])
    assert counts == sorted([on_first, 3 - on_first])
    for client in admitted:
        assert (await client.request("ping"))["type"] == "pong"


async def test_the_per_user_limit_counts_connections_on_every_instance(
    gateways: Gateways, ws_open: Connect, make_ws_user: MakeUser, redis_namespace: RedisNamespace
) -> None:
    first = await gateways.start(APEX_WS_MAX_CONNECTIONS_PER_USER="3")
    second = await gateways.start(APEX_WS_MAX_CONNECTIONS_PER_USER="3")
    user, other = await make_ws_user(), await make_ws_user()
    on_first = [await ws_open(first.url, user.token) for _ in range(2)]
    await ws_open(second.url, user.token)

    with pytest.raises(HandshakeRefused) as on_second:
        await ws_open(second.url, user.token)
    with pytest.raises(HandshakeRefused) as again_on_first:
        await ws_open(first.url, user.token)

    assert (on_second.value.status, on_second.value.body["error"]) == (429, "too_many_connections")
    assert (again_on_first.value.status, again_on_first.value.body["error"]) == (
        429,
        "too_many_connections",
    )
    assert _tabs_in_redis(redis_namespace, user.user_id) == 3
    assert (await ws_open(second.url, other.token)).user_id == other.user_id  # per user

    # A slot freed on one instance is free on the other.
    await on_first[0].close()

    async def admitted() -> WsClient | None:
        outcome = await _attempt(ws_open, second.url, user.token)
        if isinstance(outcome, HandshakeRefused):
            assert outcome.status == 429, outcome.body
            return None
        return outcome

    newcomer = await eventually(admitted, timeout=5, message="the freed slot is taken")
    assert newcomer is not None
    assert _tabs_in_redis(redis_namespace, user.user_id) == 3
