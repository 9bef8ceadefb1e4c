"""003 WebSocket message delivery guarantee: at-least-once, no loss, no duplicate to the app.

An app that does what the contract asks of a client (remember the last seq processed,
reconnect with it, drop a seq it already has) receives every message exactly once and in
order while its network drops, while the gateway instance it is connected to crashes, and
while that instance drains for a restart. The gateway itself replays from the app's last seq,
so the app never even sees a duplicate frame. What a crashed instance acknowledged before it
died is not lost either: an ack means the message is in the user's stream.
"""

from __future__ import annotations

import asyncio

import pytest
from websockets.exceptions import ConnectionClosed

from apex_testkit import FaultProxy, eventually
from ws_tests.app import App
from ws_tests.client import Connect, WsClient
from ws_tests.gateways import FAST, Gateways, Serve
from ws_tests.messages import ids_of, next_message_is, publish, seqs_of, to_user
from ws_tests.users import MakeUser, WsUser

BVJ = pytest.mark.bvj(
    segment="enterprise", goal="Reliable real-time delivery: no lost or doubled updates",
    mrr=150000, scenario="003:WS message delivery guarantee",
)  # fmt: skip
pytestmark = [BVJ]

TOTAL = 200


async def publish_many(publisher: WsClient, recipient: WsUser, count: int) -> list[str]:
    """`count` messages to `recipient`, one after the other (each acked before the next)."""
    return [await publish(publisher, to_user(recipient), {"n": n}) for n in range(count)]


def assert_exactly_once_in_order(app: App, sent: list[str]) -> None:
    assert seqs_of(app.processed) == list(range(1, len(sent) + 1)), "the app lost a message"
    assert ids_of(app.processed) == sent
    for frames in app.raw:
        seqs = seqs_of(frames)
        assert seqs == sorted(set(seqs)), f"one connection repeated or reordered: {seqs}"
    resent = sum(len(frames) for frames in app.raw) - len(sent)
    assert resent == 0, f"the gateway sent {resent} message(s) the app had already processed"


@pytest.mark.L2
@pytest.mark.L3
async def test_dropped_connections_lose_nothing_and_repeat_nothing(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    url = await serve_gateway(**FAST)
    alice, bob = await make_ws_user(), await make_ws_user()
    alice_tab = await ws_open(url, alice.token)
    with FaultProxy(url, name="bob-network") as network:
        app = App(ws_open, bob.token, network.url_for(url))
        await app.connect(last_seq=0)

        async def drop_the_network(app: App) -> None:
            if len(app.processed) in (40, 120):
                network.reset_peers()  # RST both ways, mid-stream

        publishing = asyncio.create_task(publish_many(alice_tab, bob, TOTAL))
        await app.receive(TOTAL, on_message=drop_the_network)
        sent = await publishing

    assert app.reconnects == 2, app.close_codes
    assert_exactly_once_in_order(app, sent)


@pytest.mark.L3
async def test_a_gateway_crash_mid_stream_loses_nothing(
    gateways: Gateways, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    survivor, doomed = await gateways.start(**FAST), await gateways.start(**FAST)
    alice, bob = await make_ws_user(), await make_ws_user()
    alice_tab = await ws_open(survivor.url, alice.token)
    app = App(ws_open, bob.token, doomed.url)
    await app.connect(last_seq=0)

    async def crash(app: App) -> None:
        if len(app.processed) == 50:
            await doomed.kill()

    publishing = asyncio.create_task(publish_many(alice_tab, bob, TOTAL))
    await app.receive(TOTAL, on_message=crash, fallback_urls=[survivor.url])
    sent = await publishing

    assert app.reconnects == 1
    assert app.url == survivor.url
    assert_exactly_once_in_order(app, sent)


@pytest.mark.L3
async def test_what_a_crashed_gateway_acknowledged_is_kept(
    gateways: Gateways, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    survivor, doomed = await gateways.start(**FAST), await gateways.start(**FAST)
    alice, bob = await make_ws_user(), await make_ws_user()
    alice_tab = await ws_open(doomed.url, alice.token)
    acked: list[str] = []

    async def publish_until_the_crash() -> None:
        n = 0
        while True:
            try:
                acked.append(await publish(alice_tab, to_user(bob), {"n": n}))
            except ConnectionClosed:
                return
            n += 1

    async def enough() -> bool:
        return len(acked) >= 60

    publishing = asyncio.create_task(publish_until_the_crash())
    await eventually(enough, timeout=20, message="60 acks")
    await doomed.kill()
    await asyncio.wait_for(publishing, 15)

    bob_tab = await ws_open(survivor.url, bob.token, last_seq=0)
    head = int(bob_tab.welcome["last_seq"])
    # One publish at a time: at most the one in flight at the crash went in unacked.
    assert len(acked) <= head <= len(acked) + 1, (len(acked), head)
    stream = await bob_tab.messages(head)
    assert seqs_of(stream) == list(range(1, head + 1)), "a hole in the user's stream"
    assert ids_of(stream)[: len(acked)] == acked, "an acknowledged message was lost"


@pytest.mark.L2
@pytest.mark.L3
async def test_a_draining_gateway_hands_its_clients_over_without_loss(
    gateways: Gateways, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    survivor, draining = await gateways.start(**FAST), await gateways.start(**FAST)
    alice, bob = await make_ws_user(), await make_ws_user()
    alice_tab = await ws_open(survivor.url, alice.token)
    app = App(ws_open, bob.token, draining.url)
    first = await app.connect(last_seq=0)
    stopping: list[asyncio.Task[None]] = []

    async def restart(app: App) -> None:
        if len(app.processed) == 50:
            stopping.append(asyncio.create_task(draining.stop()))

    publishing = asyncio.create_task(publish_many(alice_tab, bob, TOTAL))
    await app.receive(TOTAL, on_message=restart, fallback_urls=[survivor.url])
    sent = await publishing
    await asyncio.gather(*stopping)

    assert app.close_codes == [1012], "a drain closes with 1012 restart"
    shutdown = [f for f in first.inbox if f["type"] == "shutdown"]
    assert shutdown, f"no shutdown frame before the close: {first.inbox}"
    assert shutdown[0].get("reconnect") is True, shutdown
    assert_exactly_once_in_order(app, sent)
    sentinel = await publish(alice_tab, to_user(bob), {"n": TOTAL})
    assert app.client is not None
    assert (await next_message_is(app.client, sentinel))["seq"] == TOTAL + 1
