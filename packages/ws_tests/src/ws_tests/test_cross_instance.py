"""002#1 WebSocket Redis pub/sub across instances: lifecycle, broadcasting, reconnection.

The rules under test (CONTRACT4, Messages / Ordering): a message to `user:<uid>` reaches
every connection of that user on every instance, a broadcast every connected user, each
exactly once and in seq order; messages are in the user's Redis stream before pub/sub
notifies, so a connection that missed a notification (Redis connection reset) fills the
gap from the stream. Both gateways reach Redis through one fault proxy here.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from apex_testkit import FaultProxy, RedisNamespace, eventually
from ws_tests.client import Connect, Frame, WsClient, stays_open
from ws_tests.gateways import GatewayHandle, Gateways
from ws_tests.messages import BROADCAST_PERMISSION
from ws_tests.users import MakeUser

PUBSUB = pytest.mark.bvj(
    segment="platform", goal="Real-time features work whichever instance a user is on",
    mrr=100000, scenario="002#1",
)  # fmt: skip
pytestmark = [PUBSUB, pytest.mark.L3]

SETTINGS = {"APEX_WS_RATE": "1000/1"}


async def _pair(gateways: Gateways, **settings: str) -> tuple[GatewayHandle, GatewayHandle]:
    first = await gateways.start(**SETTINGS, **settings)
    second = await gateways.start(**SETTINGS, **settings)
    return first, second


async def _no_more_messages(client: WsClient) -> None:
    await stays_open(client, 0.3)
    extra = [f for f in client.inbox if f.get("type") == "message"]
    assert not extra, f"unexpected (duplicate?) messages: {extra}"


async def test_user_message_reaches_the_users_tabs_on_every_instance_once_in_order(
    gateways: Gateways, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    a, b = await _pair(gateways)
    sender, user = await make_ws_user(), await make_ws_user()
    sending = await ws_open(a.url, sender.token)
    tabs = [await ws_open(a.url, user.token), await ws_open(b.url, user.token)]
    assert tabs[0].welcome["instance"] != tabs[1].welcome["instance"]

    for n in range(20):
        reply = await sending.request("publish", to=f"user:{user.user_id}", data={"n": n})
        assert reply["type"] == "ack", reply

    seen = [await tab.messages(20) for tab in tabs]
    for frames in seen:
        assert [f["data"]["n"] for f in frames] == list(range(20))
        assert all(f["from"] == sender.user_id for f in frames)
        assert all(f["to"] == f"user:{user.user_id}" for f in frames)
    assert [f["seq"] for f in seen[0]] == [f["seq"] for f in seen[1]]
    for tab in tabs:
        await _no_more_messages(tab)


async def test_broadcast_reaches_every_user_on_every_instance_exactly_once(
    gateways: Gateways, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    a, b = await _pair(gateways)
    users = [await make_ws_user() for _ in range(5)]
    users.insert(1, await make_ws_user(permissions=[BROADCAST_PERMISSION]))  # who broadcasts
    clients = [await ws_open((a, b)[n % 2].url, u.token) for n, u in enumerate(users)]

    reply = await clients[1].request("publish", to="broadcast", data={"hello": "all"})

    assert reply["type"] == "ack"
    for client in clients:  # the sender (on b) too: it is a connected user
        frame = await client.expect("message")
        assert (frame["data"], frame["to"], frame["from"]) == (
            {"hello": "all"},
            "broadcast",
            users[1].user_id,
        )
        await _no_more_messages(client)


async def _publish_until_acked(sending: WsClient, to: str, n: int) -> bool:
    reply = await sending.request("publish", to=to, data={"n": n}, timeout=15)
    return bool(reply["type"] == "ack")


async def test_redis_connection_reset_loses_no_acknowledged_message(
    gateways: Gateways,
    ws_open: Connect,
    make_ws_user: MakeUser,
    fault_proxy: Callable[[str], FaultProxy],
    redis_namespace: RedisNamespace,
) -> None:
    proxy = fault_proxy(redis_namespace.url)
    a, b = await _pair(gateways, APEX_REDIS_URL=proxy.url_for(redis_namespace.url))
    sender, user = await make_ws_user(), await make_ws_user()
    sending = await ws_open(a.url, sender.token)
    receiving = await ws_open(b.url, user.token)
    to = f"user:{user.user_id}"
    acked = [n for n in range(5) if await _publish_until_acked(sending, to, n)]
    assert acked == list(range(5))
    before = await receiving.messages(5)

    proxy.reset_peers()  # every Redis connection of both instances: RST
    for n in range(5, 15):  # right through the reset: some may fail, none may vanish if acked
        if await _publish_until_acked(sending, to, n):
            acked.append(n)

    async def flowing() -> bool:
        n = 100 + len(acked)
        if await _publish_until_acked(sending, to, n):
            acked.append(n)
            return True
        return False

    await eventually(flowing, timeout=20, message="publishing works after the reset")
    after: list[Frame] = []
    while not set(acked) <= {f["data"]["n"] for f in before + after}:
        after.append(await receiving.expect("message", timeout=20))

    frames: list[Frame] = before + after
    delivered = [f["data"]["n"] for f in frames]
    # Every acknowledged message arrived; a refused one may or may not have been stored
    # (at-least-once for the sender), but nothing twice and nothing out of order.
    assert delivered == sorted(set(delivered)), delivered
    seqs = [f["seq"] for f in frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    assert proxy.stats.resets > 0  # the fault really happened
    await _no_more_messages(receiving)


async def test_redis_outage_and_return_pub_sub_recovers_across_instances(
    gateways: Gateways,
    ws_open: Connect,
    make_ws_user: MakeUser,
    fault_proxy: Callable[[str], FaultProxy],
    redis_namespace: RedisNamespace,
) -> None:
    proxy = fault_proxy(redis_namespace.url)
    a, b = await _pair(gateways, APEX_REDIS_URL=proxy.url_for(redis_namespace.url))
    sender, user = await make_ws_user(), await make_ws_user()
    sending = await ws_open(a.url, sender.token)
    receiving = await ws_open(b.url, user.token)
    to = f"user:{user.user_id}"
    assert await _publish_until_acked(sending, to, 0)
    await receiving.expect("message", data={"n": 0})

    proxy.down()  # Redis gone (a restart, as clients see it)
    failed = await sending.request("publish", to=to, data={"n": -1}, timeout=30)
    assert failed["type"] == "error", failed  # an answer, not a hang, and no ack
    proxy.up()

    n = 0

    async def recovered() -> bool:
        nonlocal n
        n += 1
        return await _publish_until_acked(sending, to, n)

    await eventually(recovered, timeout=30, message="publishing after Redis returns")
    frame = await receiving.expect("message", data={"n": n}, timeout=20)
    assert frame["from"] == sender.user_id
    # The same sockets carried on: the outage closed nobody.
    assert (await receiving.request("ping"))["type"] == "pong"
    assert not [f for f in receiving.inbox if f.get("type") == "message" and f["data"]["n"] < 0]
