"""001#23 Message ordering guarantees: per-recipient sequence numbers, gaps, reordering.

Every user's messages are numbered 1, 2, 3... (INCR of the user's counter) and each
connection delivers them strictly increasing without gaps, whatever the order in which
concurrent publishers on several gateway instances got their numbers and notifications
(a connection that sees seq > last + 1 reads the missing ones from the stream first). Every
tab of a user sees the same order, and a publisher's own messages keep the order in which
it sent them (it waits for each ack before the next).
"""

from __future__ import annotations

import asyncio

import pytest

from ws_tests.client import Connect, Frame, WsClient
from ws_tests.gateways import FAST, Serve
from ws_tests.messages import next_message_is, publish, seqs_of, to_user
from ws_tests.users import MakeUser

BVJ = pytest.mark.bvj(
    segment="enterprise", goal="Consistent state: clients apply updates in one order, no gaps",
    mrr=8000, scenario="001#23",
)  # fmt: skip
pytestmark = [BVJ]


def order_of(frames: list[Frame]) -> list[tuple[int, str]]:
    return [(int(f["seq"]), str(f["id"])) for f in frames]


@pytest.mark.L2
@pytest.mark.L3
async def test_concurrent_publishers_on_two_instances_give_each_tab_a_gapless_sequence(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    urls = [await serve_gateway(instance=0, **FAST), await serve_gateway(instance=1, **FAST)]
    bob, carol = await make_ws_user(), await make_ws_user()
    recipients = {
        bob.user_id: [await ws_open(urls[0], bob.token), await ws_open(urls[1], bob.token)],
        carol.user_id: [await ws_open(urls[1], carol.token), await ws_open(urls[0], carol.token)],
    }
    publishers = [await ws_open(urls[i % 2], (await make_ws_user()).token) for i in range(6)]
    per_publisher = 30

    async def publish_all(publisher: WsClient, tag: int) -> list[tuple[str, str]]:
        sent = []
        for n in range(per_publisher):
            target = bob if (n + tag) % 2 else carol
            sent.append((target.user_id, await publish(publisher, to_user(target), {"p": tag})))
        return sent

    sent = await asyncio.gather(*(publish_all(p, i) for i, p in enumerate(publishers)))

    for user_id, tabs in recipients.items():
        expected = [[mid for uid, mid in batch if uid == user_id] for batch in sent]
        total = sum(len(ids) for ids in expected)
        received = [await tab.messages(total) for tab in tabs]
        assert seqs_of(received[0]) == list(range(1, total + 1)), "gap, repeat or reordering"
        assert order_of(received[1]) == order_of(received[0]), "two tabs saw different orders"
        delivered = [str(f["id"]) for f in received[0]]
        for own in expected:  # each publisher's messages in the order it sent them
            assert [mid for mid in delivered if mid in set(own)] == own


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_sequences_are_per_recipient_user(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    url = await serve_gateway()
    alice, bob, carol = await make_ws_user(), await make_ws_user(), await make_ws_user()
    alice_tab = await ws_open(url, alice.token)
    bob_tab, carol_tab = await ws_open(url, bob.token), await ws_open(url, carol.token)

    for target in (bob, carol, bob, bob, carol):
        await publish(alice_tab, to_user(target), {})

    assert seqs_of(await bob_tab.messages(3)) == [1, 2, 3]
    assert seqs_of(await carol_tab.messages(2)) == [1, 2]


@pytest.mark.L2
@pytest.mark.L3
async def test_a_tab_opened_mid_stream_continues_from_its_welcome_seq_without_gaps(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    """The welcome says where the user's stream stands; the new tab's first message is the
    next one, even when it was numbered while the tab was being set up."""
    url = await serve_gateway(**FAST)
    alice, bob = await make_ws_user(), await make_ws_user()
    alice_tab = await ws_open(url, alice.token)
    total = 300
    await publish(alice_tab, to_user(bob), {"n": 0})
    started = asyncio.Event()

    async def stream() -> None:
        for n in range(1, total):
            await publish(alice_tab, to_user(bob), {"n": n})
            if n == 20:
                started.set()

    streaming = asyncio.create_task(stream())
    await started.wait()
    late_tabs = [await ws_open(url, bob.token) for _ in range(5)]
    await streaming

    for tab in late_tabs:
        start = int(tab.welcome["last_seq"])
        assert 20 <= start <= total, tab.welcome
        frames = await tab.messages(total - start)
        assert seqs_of(frames) == list(range(start + 1, total + 1)), "skipped or repeated"
        assert [f["data"]["n"] for f in frames] == list(range(start, total))
    sentinel = await publish(alice_tab, to_user(bob), {"n": total})
    for tab in late_tabs:
        assert (await next_message_is(tab, sentinel))["seq"] == total + 1
