"""001#17 Message queue to WebSocket broadcast: targeted messages, broadcast, delivery.

A message to `user:<uid>` reaches every connection of that user, on every gateway instance,
and nobody else; a broadcast (for holders of the broadcast permission) reaches every
connected user of the sender's tenant once per connection, each with that user's own
sequence number; the sender gets an ack; a malformed target is refused, and so is a user
who does not exist or belongs to another tenant (`unknown_user`, nothing written).
Absence is checked with a sentinel: a later message to the same recipient must be the next
one it delivers (the recipient's stream is ordered, so a stray copy would come first).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from apex_testkit import RedisNamespace
from ws_tests.client import Connect, Frame, WsClient
from ws_tests.gateways import Serve
from ws_tests.messages import BROADCAST_PERMISSION, next_message_is, publish, to_user
from ws_tests.users import MakeUser

BVJ = pytest.mark.bvj(
    segment="early", goal="Real-time updates keep users engaged", mrr=8000, scenario="001#17"
)
pytestmark = [BVJ]


@dataclass(frozen=True)
class TwoTabs:
    """Two users of no tenant, each with one tab on the same gateway."""

    url: str
    alice: WsClient
    bob: WsClient


@pytest.fixture
async def two_tabs(serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser) -> TwoTabs:
    """Alice and Bob, connected to instance 0 of the worker's gateway."""
    url = await serve_gateway()
    alice, bob = await make_ws_user(), await make_ws_user()
    return TwoTabs(url, await ws_open(url, alice.token), await ws_open(url, bob.token))


async def _nothing_delivered(*tabs: WsClient) -> None:
    """No stream of these tabs' users got a message: each one's next is a sentinel, seq 1."""
    for sender, recipient in zip(tabs, tabs[1:] + tabs[:1], strict=True):
        sentinel = await publish(sender, to_user(recipient.user_id), {"sentinel": True})
        assert (await next_message_is(recipient, sentinel))["seq"] == 1


def assert_delivered(frame: Frame, *, seq: int, message_id: str, sender: str, to: str,
                     data: Mapping[str, object]) -> None:  # fmt: skip
    assert frame["type"] == "message", frame
    assert frame["seq"] == seq, frame
    assert frame["id"] == message_id, frame
    assert frame["from"] == sender, frame
    assert frame["to"] == to, frame
    assert frame["data"] == data, frame


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_a_targeted_message_reaches_every_connection_of_the_target_and_nobody_else(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    url = await serve_gateway()
    alice, bob, carol = await make_ws_user(), await make_ws_user(), await make_ws_user()
    alice_tab = await ws_open(url, alice.token)
    bob_tabs = [await ws_open(url, bob.token) for _ in range(3)]
    carol_tab = await ws_open(url, carol.token)
    data = {"text": "your report is ready", "report": {"id": 7, "rows": [1, 2, 3]}}

    message_id = await publish(alice_tab, to_user(bob), data)

    for tab in bob_tabs:
        frame = await tab.expect("message")
        assert_delivered(frame, seq=1, message_id=message_id, sender=alice.user_id,
                         to=to_user(bob), data=data)  # fmt: skip
    # Nobody else: the next message carol and alice get is one sent to them afterwards,
    # numbered 1 in their own streams.
    to_carol = await publish(alice_tab, to_user(carol), {"n": "carol"})
    assert (await next_message_is(carol_tab, to_carol))["seq"] == 1
    to_alice = await publish(carol_tab, to_user(alice), {"n": "alice"})
    assert (await next_message_is(alice_tab, to_alice))["seq"] == 1
    # And each of bob's tabs got it once: the next one there is the next one sent.
    again = await publish(alice_tab, to_user(bob), {"n": 2})
    for tab in bob_tabs:
        assert (await next_message_is(tab, again))["seq"] == 2


@pytest.mark.L2
@pytest.mark.L3
async def test_a_targeted_message_reaches_the_target_on_every_gateway_instance(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    first, second = await serve_gateway(instance=0), await serve_gateway(instance=1)
    alice, bob = await make_ws_user(), await make_ws_user()
    alice_on_first = await ws_open(first, alice.token)
    alice_on_second = await ws_open(second, alice.token)
    bob_tabs = [await ws_open(first, bob.token), await ws_open(second, bob.token)]
    assert bob_tabs[0].welcome["instance"] != bob_tabs[1].welcome["instance"]

    sent = [
        await publish(alice_on_first, to_user(bob), {"via": "first"}),
        await publish(alice_on_second, to_user(bob), {"via": "second"}),
    ]

    for tab in bob_tabs:
        frames = await tab.messages(2)
        assert [(f["seq"], f["id"]) for f in frames] == [(1, sent[0]), (2, sent[1])]
        assert [f["data"]["via"] for f in frames] == ["first", "second"]
        assert {f["from"] for f in frames} == {alice.user_id}


@pytest.mark.L2
@pytest.mark.L3
async def test_a_broadcast_reaches_every_connected_user_once_per_connection(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    first, second = await serve_gateway(instance=0), await serve_gateway(instance=1)
    alice = await make_ws_user(permissions=[BROADCAST_PERMISSION])
    bob, carol = await make_ws_user(), await make_ws_user()
    alice_tab = await ws_open(first, alice.token)
    bob_tabs = [await ws_open(first, bob.token), await ws_open(second, bob.token)]
    carol_tab = await ws_open(second, carol.token)
    # Bob's stream already holds two messages: the broadcast is his third.
    for n in range(2):
        await publish(carol_tab, to_user(bob), {"n": n})
    for tab in bob_tabs:
        assert [f["seq"] for f in await tab.messages(2)] == [1, 2]
    data = {"announcement": "maintenance at 02:00 UTC"}

    message_id = await publish(alice_tab, "broadcast", data)

    expected_seq = {alice.user_id: 1, bob.user_id: 3, carol.user_id: 1}
    for tab in [alice_tab, *bob_tabs, carol_tab]:
        frame = await tab.expect("message")
        assert_delivered(frame, seq=expected_seq[tab.user_id], message_id=message_id,
                         sender=alice.user_id, to="broadcast", data=data)  # fmt: skip
    # Once per connection: the next message on each connection is the next one sent.
    for user, tabs in ((alice, [alice_tab]), (bob, bob_tabs), (carol, [carol_tab])):
        sentinel = await publish(alice_tab, to_user(user), {"sentinel": True})
        for tab in tabs:
            frame = await next_message_is(tab, sentinel)
            assert frame["seq"] == expected_seq[user.user_id] + 1


@pytest.mark.L2
@pytest.mark.L3
async def test_a_broadcast_is_not_kept_for_users_who_were_not_connected(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    """ "Every connected user": someone who signs in later does not find it in their stream."""
    url = await serve_gateway()
    alice = await make_ws_user(permissions=[BROADCAST_PERMISSION])
    bob, dave = await make_ws_user(), await make_ws_user()
    alice_tab = await ws_open(url, alice.token)
    bob_tab = await ws_open(url, bob.token)
    await publish(alice_tab, "broadcast", {"n": 1})
    await bob_tab.expect("message", to="broadcast")

    dave_tab = await ws_open(url, dave.token, last_seq=0)

    assert dave_tab.welcome["last_seq"] == 0
    sentinel = await publish(alice_tab, to_user(dave), {"first": True})
    assert (await next_message_is(dave_tab, sentinel))["seq"] == 1


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@pytest.mark.parametrize(
    "to",
    ["", "user:", "user", "team:ops", "broadcast:all", "users:x", None, 42, ["broadcast"]],
)
async def test_a_malformed_target_is_refused_and_routes_nothing(
    two_tabs: TwoTabs, to: object
) -> None:
    alice_tab = two_tabs.alice
    fields: dict[str, Any] = {"data": {"x": 1}}
    if to is not None:
        fields["to"] = to

    reply = await alice_tab.request("publish", **fields)

    assert reply["type"] == "error", reply
    assert reply["code"] == "invalid", reply
    # The connection stays usable and no stream got a message out of it.
    assert (await alice_tab.request("ping"))["type"] == "pong"
    await _nothing_delivered(two_tabs.alice, two_tabs.bob)


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_messages_to_an_offline_user_wait_in_their_stream(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    """Delivery does not depend on the target being online: acked means kept."""
    url = await serve_gateway()
    alice, bob = await make_ws_user(), await make_ws_user()
    alice_tab = await ws_open(url, alice.token)
    sent = [await publish(alice_tab, to_user(bob), {"n": n}) for n in range(3)]

    bob_tab = await ws_open(url, bob.token, last_seq=0)

    assert bob_tab.welcome["last_seq"] == 3
    frames = await bob_tab.messages(3)
    assert [(f["seq"], f["id"], f["data"]) for f in frames] == [
        (n + 1, sent[n], {"n": n}) for n in range(3)
    ]


# --- who may reach whom ---------------------------------------------------------------------


def _keys_naming(redis_namespace: RedisNamespace, user_id: str) -> list[str]:
    """The gateway's message keys (seq, stream) of `user_id` in Redis."""
    redis = redis_namespace.client()
    try:
        return sorted(redis.scan_iter(f"{redis_namespace.prefix}ws:*{user_id}*"))
    finally:
        redis.close()


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_a_message_to_a_user_of_another_tenant_is_refused_and_never_delivered(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    url = await serve_gateway()
    ours, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    mallory = await make_ws_user(tenant=ours)
    victim, colleague = await make_ws_user(tenant=theirs), await make_ws_user(tenant=theirs)
    mallory_tab = await ws_open(url, mallory.token)
    victim_tab, colleague_tab = (
        await ws_open(url, victim.token),
        await ws_open(url, colleague.token),
    )

    refused = await mallory_tab.request(
        "publish", to=to_user(victim), data={"text": "your password expired, sign in here"}
    )

    # The same answer as for a user who does not exist: no way to probe other tenants.
    assert (refused["type"], refused["code"]) == ("error", "unknown_user"), refused
    # Nothing reached the victim: their first message is one from their own tenant.
    sentinel = await publish(colleague_tab, to_user(victim), {"n": 1})
    assert (await next_message_is(victim_tab, sentinel))["seq"] == 1


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.parametrize("target", ["uuid", "name"])
async def test_a_message_to_a_user_who_does_not_exist_is_refused_and_creates_no_key(
    serve_gateway: Serve,
    ws_open: Connect,
    make_ws_user: MakeUser,
    redis_namespace: RedisNamespace,
    target: str,
) -> None:
    url = await serve_gateway()
    alice = await make_ws_user()
    alice_tab = await ws_open(url, alice.token)
    nobody = str(uuid.uuid4()) if target == "uuid" else f"nobody-{uuid.uuid4().hex[:8]}"

    refused = await alice_tab.request("publish", to=f"user:{nobody}", data={"x": 1})

    assert (refused["type"], refused["code"]) == ("error", "unknown_user"), refused
    assert _keys_naming(redis_namespace, nobody) == []
    assert (await alice_tab.request("ping"))["type"] == "pong"


@pytest.mark.L2
@pytest.mark.L3
async def test_a_users_stream_expires_after_the_stream_ttl(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser, redis_namespace: RedisNamespace
) -> None:
    stream_ttl = 600
    url = await serve_gateway(APEX_WS_STREAM_TTL=str(stream_ttl))
    alice, bob = await make_ws_user(), await make_ws_user()
    alice_tab = await ws_open(url, alice.token)

    await publish(alice_tab, to_user(bob), {"n": 1})

    redis = redis_namespace.client()
    try:
        ttl = int(redis.ttl(f"{redis_namespace.prefix}ws:stream:{bob.user_id}"))
    finally:
        redis.close()
    assert stream_ttl - 60 <= ttl <= stream_ttl, f"bob's stream expires in {ttl} s"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_a_broadcast_without_the_broadcast_permission_is_refused_and_reaches_nobody(
    two_tabs: TwoTabs,
) -> None:
    refused = await two_tabs.alice.request(
        "publish", to="broadcast", data={"text": "free credits!"}
    )

    assert (refused["type"], refused["code"]) == ("error", "forbidden"), refused
    # Nobody got it, the sender included (a broadcast reaches the sender's tabs too).
    await _nothing_delivered(two_tabs.alice, two_tabs.bob)


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_a_broadcast_reaches_only_the_users_of_the_senders_tenant(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    first, second = await serve_gateway(instance=0), await serve_gateway(instance=1)
    ours, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    alice = await make_ws_user(tenant=ours, permissions=[BROADCAST_PERMISSION])
    carol, bob, dan = (
        await make_ws_user(tenant=ours),
        await make_ws_user(tenant=theirs),
        await make_ws_user(),  # no tenant
    )
    alice_tab, carol_tab = await ws_open(first, alice.token), await ws_open(second, carol.token)
    bob_tab, dan_tab = await ws_open(first, bob.token), await ws_open(second, dan.token)

    message_id = await publish(alice_tab, "broadcast", {"text": "standup in 5"})

    for tab in (alice_tab, carol_tab):
        assert (await next_message_is(tab, message_id))["seq"] == 1
    # The other tenant's user and the user with no tenant got nothing.
    for outsider, outsider_tab in ((bob, bob_tab), (dan, dan_tab)):
        sentinel = await publish(outsider_tab, to_user(outsider), {"sentinel": True})
        assert (await next_message_is(outsider_tab, sentinel))["seq"] == 1
