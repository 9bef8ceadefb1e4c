"""001#20 WebSocket rate limiting and 004#10 rate limiting with backpressure.

The rules under test (CONTRACT4, Rate limits / Backpressure): over APEX_WS_RATE a message
is dropped (never processed) and answered `{"type":"error","code":"rate_limited",
"retry_after_ms"}`; after APEX_WS_RATE_VIOLATIONS such errors the connection is closed
4008. Each connection has a bounded send queue (APEX_WS_SEND_QUEUE): a connection that
does not read is closed 4009 "slow consumer", the user loses nothing (replay from the
stream), and nobody else is slowed down or loses anything.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from apex_testkit import eventually
from ws_tests.client import Connect, Frame, WsClient, freeze, stays_open, thaw
from ws_tests.gateways import GatewayHandle, Gateways, metric
from ws_tests.messages import BROADCAST_PERMISSION
from ws_tests.users import MakeUser

THROTTLING = pytest.mark.bvj(
    segment="platform", goal="DoS prevention: one noisy client cannot degrade the gateway",
    mrr=9000, scenario="001#20",
)  # fmt: skip
BACKPRESSURE = pytest.mark.bvj(
    segment="platform", goal="Slow clients are shed without losing data or slowing others",
    mrr=6000, scenario="004#10",
)  # fmt: skip

RATE = {"APEX_WS_RATE": "5/1", "APEX_WS_RATE_VIOLATIONS": "3"}


async def _burst(client: WsClient, to: str, count: int, tag: str) -> list[str]:
    """Send `count` publishes back to back (no waiting for replies); their ids."""
    return [
        await client.send("publish", id=f"{tag}-{n}", to=to, data={"n": n}) for n in range(count)
    ]


async def _replies(client: WsClient, ids: list[str]) -> dict[str, Frame]:
    """The replies (acks and errors, in arrival order) to the burst `ids`, by id; a reply
    that does not echo its message's id fails the test (every reply echoes it)."""
    replies: list[Frame] = []
    while len(replies) < len(ids):
        frame = await client._next(10)
        if frame["type"] in ("ack", "error"):
            replies.append(frame)
        else:
            client.inbox.append(frame)
    assert sorted(str(r.get("id")) for r in replies) == sorted(ids), f"ids not echoed: {replies}"
    return {str(r["id"]): r for r in replies}


@pytest.mark.L2
@pytest.mark.L3
@THROTTLING
async def test_messages_over_the_rate_are_refused_with_retry_after_and_dropped(
    gateways: Gateways, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    gateway = await gateways.start(**RATE)
    sender, receiver = await make_ws_user(), await make_ws_user()
    sending = await ws_open(gateway.url, sender.token)
    receiving = await ws_open(gateway.url, receiver.token)
    before = metric(await gateway.metrics(), "apex_gateway_rate_limited_total")

    ids = await _burst(sending, f"user:{receiver.user_id}", 6, "burst")
    replies = await _replies(sending, ids)

    assert [replies[i]["type"] for i in ids[:5]] == ["ack"] * 5
    refused = replies[ids[5]]
    assert (refused["type"], refused["code"]) == ("error", "rate_limited"), refused
    assert 0 < refused["retry_after_ms"] <= 1000, refused
    delivered = await receiving.messages(5)
    assert [m["data"]["n"] for m in delivered] == [0, 1, 2, 3, 4]
    after = metric(await gateway.metrics(), "apex_gateway_rate_limited_total")
    assert after - before == 1

    # Quota management: once retry_after_ms has passed the sender may publish again, and
    # the receiver's next message is that one: the refused message was never processed.
    await stays_open(sending, refused["retry_after_ms"] / 1000 + 0.2)  # one ping used
    again = await sending.request("publish", to=f"user:{receiver.user_id}", data={"n": 99})
    assert again["type"] == "ack", again
    following = await receiving.expect("message")
    assert following["data"] == {"n": 99}
    assert following["seq"] == delivered[-1]["seq"] + 1


@pytest.mark.L2
@pytest.mark.L3
@THROTTLING
async def test_repeated_violations_close_the_connection_with_4008(
    gateways: Gateways, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    gateway = await gateways.start(**RATE)
    user = await make_ws_user()
    flooding = await ws_open(gateway.url, user.token)
    calm = await ws_open(gateway.url, user.token)  # the same user, another connection

    await _burst(flooding, f"user:{user.user_id}", 5 + 3 + 2, "flood")
    code, reason = await flooding.closed(timeout=10)

    assert (code, reason) == (4008, "rate limited")
    errors = [f for f in flooding.inbox if f["type"] == "error"]
    assert [e["code"] for e in errors] == ["rate_limited"] * 3  # closed after the 3rd
    # The limit is per connection: the user's other connection is untouched.
    assert (await calm.request("ping"))["type"] == "pong"


@pytest.mark.L2
@pytest.mark.L3
@THROTTLING
async def test_each_connection_has_its_own_budget(
    gateways: Gateways, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    gateway = await gateways.start(**RATE)
    user = await make_ws_user(permissions=[BROADCAST_PERMISSION])
    first, second = await ws_open(gateway.url, user.token), await ws_open(gateway.url, user.token)

    first_replies = await _replies(first, await _burst(first, "broadcast", 5, "a"))
    second_replies = await _replies(second, await _burst(second, "broadcast", 5, "b"))

    assert {r["type"] for r in first_replies.values()} == {"ack"}
    assert {r["type"] for r in second_replies.values()} == {"ack"}


def _payload(size: int) -> str:
    """Incompressible text of about `size` characters."""
    return base64.b64encode(os.urandom(size * 3 // 4)).decode()


class Progress:
    """How many messages a reading client has taken so far (to pace a publisher by it)."""

    def __init__(self) -> None:
        self.count = 0
        self.changed = asyncio.Event()

    async def within(self, sent: int, window: int) -> None:
        while sent - self.count > window:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 30)


async def _flood(
    publisher: WsClient,
    to: str,
    count: int,
    size: int,
    paced_by: Progress,
    window: int = 1,
    *,
    until: Callable[[], Awaitable[bool]] | None = None,
) -> int:
    """Publish up to `count` big messages, each acknowledged, never more than `window` ahead
    of what a healthy reader has taken: whatever falls behind is slow by its own doing.
    With `until` (asked every FLOOD_CHECK messages), stop FLOOD_AFTER messages after it
    first holds. Return how many were published."""
    stop_at = count
    for n in range(count):
        if n == stop_at:
            return n
        if until is not None and stop_at == count and n % FLOOD_CHECK == 0 and await until():
            stop_at = min(count, n + FLOOD_AFTER)
        await paced_by.within(n, window)
        reply = await publisher.request("publish", to=to, data={"n": n, "blob": _payload(size)})
        assert reply["type"] == "ack", reply
    return count


async def _received(
    client: WsClient, count: int, progress: Progress | None = None, into: list[Frame] | None = None
) -> list[Frame]:
    frames = [] if into is None else into
    for _ in range(count):
        frames.append(await client.expect("message", timeout=30))
        if progress is not None:
            progress.count += 1
            progress.changed.set()
    return frames


# Enough bytes to fill the kernel's socket buffers between gateway and a frozen client
# (a few MB on loopback) and then a 16-message send queue, with no compression to help.
# The flood stops early, FLOOD_AFTER messages after the gateway is seen (every FLOOD_CHECK
# messages) to have shed the slow consumer: on loopback that is after about 150.
FLOOD_COUNT, FLOOD_SIZE = 400, 32_000
FLOOD_CHECK, FLOOD_AFTER = 10, 20
SLOW = {
    "APEX_WS_SEND_QUEUE": "16",
    "APEX_WS_RATE": "100000/1",
    "APEX_WS_REPLAY_BUFFER": "5000",
    "APEX_WS_COMPRESSION": "off",
}


async def _slow_consumer_scenario(
    publisher_gateway: GatewayHandle,
    consumer_gateway: GatewayHandle,
    ws_open: Connect,
    make_ws_user: MakeUser,
    resume_gateway: GatewayHandle,
) -> None:
    publisher_user, user, other = [await make_ws_user() for _ in range(3)]
    publisher = await ws_open(publisher_gateway.url, publisher_user.token)
    side_publisher = await ws_open(publisher_gateway.url, publisher_user.token)
    slow = await ws_open(consumer_gateway.url, user.token, compression=None)
    healthy_tab = await ws_open(publisher_gateway.url, user.token)
    other_user = await ws_open(consumer_gateway.url, other.token)
    start_seq = slow.welcome["last_seq"]
    slow_before = metric(await consumer_gateway.metrics(), "apex_gateway_slow_consumers_total")
    freeze(slow)

    async def shed() -> bool:
        text = await consumer_gateway.metrics()
        return metric(text, "apex_gateway_slow_consumers_total") > slow_before

    progress = Progress()
    healthy_frames: list[Frame] = []
    healthy = asyncio.create_task(_received(healthy_tab, FLOOD_COUNT, progress, healthy_frames))
    others: asyncio.Task[Any] = asyncio.create_task(_received(other_user, FLOOD_COUNT // 10))
    to_user = asyncio.create_task(
        _flood(publisher, f"user:{user.user_id}", FLOOD_COUNT, FLOOD_SIZE, progress, until=shed)
    )
    for n in range(FLOOD_COUNT // 10):  # meanwhile, small messages to someone else
        reply = await side_publisher.request("publish", to=f"user:{other.user_id}", data={"n": n})
        assert reply["type"] == "ack", reply
    sent = await to_user

    await eventually(shed, timeout=30, message="slow consumer shed")
    thaw(slow)
    code, reason = await slow.closed(timeout=30)
    assert (code, reason) == (4009, "slow consumer")

    # Everyone else got everything, in order.
    await progress.within(sent, 0)  # the healthy tab has taken every message sent
    healthy.cancel()  # it waits for more than the flood sent (cancelling a recv loses nothing)
    await asyncio.wait({healthy})
    assert [m["data"]["n"] for m in healthy_frames] == list(range(sent))
    assert [m["data"]["n"] for m in await others] == list(range(FLOOD_COUNT // 10))

    # Nothing is lost for the slow user: resume from the last seq it saw.
    seen = [f["seq"] for f in slow.inbox if f.get("type") == "message"]
    last_seen = max(seen, default=start_seq)
    # (At a gateway whose send queue holds the replay: replay pacing has its own test.)
    resumed = await ws_open(resume_gateway.url, user.token, last_seq=last_seen)
    rest = await resumed.messages(len(healthy_frames) - (last_seen - start_seq), timeout=30)
    assert [m["seq"] for m in rest] == list(range(last_seen + 1, healthy_frames[-1]["seq"] + 1))
    assert [m["data"]["n"] for m in rest] == list(range(last_seen - start_seq, sent))


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.slow
@THROTTLING
async def test_a_consumer_that_never_reads_is_closed_4009_and_others_keep_receiving(
    gateways: Gateways, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    gateway = await gateways.start(**SLOW)
    roomy = await gateways.start(**{**SLOW, "APEX_WS_SEND_QUEUE": "1000"})
    await _slow_consumer_scenario(gateway, gateway, ws_open, make_ws_user, roomy)


@pytest.mark.L3
@pytest.mark.slow
@BACKPRESSURE
async def test_slow_consumer_on_one_instance_does_not_hold_back_another(
    gateways: Gateways, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    publishing = await gateways.start(**SLOW)
    consuming = await gateways.start(**SLOW)
    roomy = await gateways.start(**{**SLOW, "APEX_WS_SEND_QUEUE": "1000"})
    await _slow_consumer_scenario(publishing, consuming, ws_open, make_ws_user, roomy)


@pytest.mark.L3
@BACKPRESSURE
async def test_throttled_publisher_does_not_affect_other_users_on_other_instances(
    gateways: Gateways, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    first = await gateways.start(**RATE)
    second = await gateways.start(**RATE)
    noisy, quiet, receiver = [await make_ws_user() for _ in range(3)]
    noisy_ws = await ws_open(first.url, noisy.token)
    quiet_ws = await ws_open(first.url, quiet.token)
    receiving = await ws_open(second.url, receiver.token)

    noisy_replies = await _replies(
        noisy_ws, await _burst(noisy_ws, f"user:{receiver.user_id}", 7, "noisy")
    )
    quiet_replies = await _replies(
        quiet_ws, await _burst(quiet_ws, f"user:{receiver.user_id}", 5, "quiet")
    )

    assert [r["type"] for r in noisy_replies.values()] == ["ack"] * 5 + ["error"] * 2
    assert {r["type"] for r in quiet_replies.values()} == {"ack"}
    got = await receiving.messages(10)
    assert sorted(m["id"] for m in got) == sorted(
        [f"noisy-{n}" for n in range(5)] + [f"quiet-{n}" for n in range(5)]
    )
    await stays_open(receiving, 0.5)
    assert not [f for f in receiving.inbox if f.get("type") == "message"], "a dropped one came"


@pytest.mark.L2
@pytest.mark.L3
@THROTTLING
async def test_a_replay_longer_than_the_send_queue_reaches_a_client_that_reads(
    gateways: Gateways, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    """A resuming client that reads as fast as it can is not a slow consumer: the replay
    from the stream must be paced by the socket, not dumped into the bounded queue."""
    gateway = await gateways.start(**SLOW)
    publisher_user, user = await make_ws_user(), await make_ws_user()
    publisher = await ws_open(gateway.url, publisher_user.token)
    for n in range(100):  # while the user is offline: 100 > the 16-message send queue
        reply = await publisher.request("publish", to=f"user:{user.user_id}", data={"n": n})
        assert reply["type"] == "ack", reply

    resumed = await ws_open(gateway.url, user.token, last_seq=0)
    frames = await resumed.messages(100, timeout=30)

    assert [f["data"]["n"] for f in frames] == list(range(100))
    assert [f["seq"] for f in frames] == list(range(1, 101))
