"""001#18 / 004#8 Reconnection with state recovery: message replay after a connection loss.

A client that lost its connection reconnects with the last seq it processed (`?last_seq=N`
or a first `{"type":"resume","last_seq":N}`) and gets exactly the messages it missed, in
order, then the live ones, never one twice; on another instance as well (the stream is
shared). Past the replay buffer the gateway says `replay_truncated` (with the oldest seq it
still has) and continues from there.
"""

from __future__ import annotations

import asyncio

import pytest

from ws_tests.client import Connect, WsClient
from ws_tests.gateways import FAST, Serve
from ws_tests.messages import ids_of, next_message_is, publish, seqs_of, to_user
from ws_tests.users import MakeUser, WsUser

BVJ = pytest.mark.bvj(
    segment="mid", goal="Seamless reconnection: no message lost on a flaky network", mrr=7000,
    scenario="001#18",
)  # fmt: skip
BVJ_004 = pytest.mark.bvj(
    segment="mid", goal="Reconnect anywhere and resume where the client left off", mrr=8000,
    scenario="004#8",
)  # fmt: skip


async def _missed_three_of_seven(
    url: str, ws_open: Connect, make_ws_user: MakeUser
) -> tuple[WsClient, WsUser, list[str]]:
    """Bob reads messages 1-3, loses his connection, 4-7 are published meanwhile.
    Returns alice's tab, bob, and the ids of messages 1..7."""
    alice, bob = await make_ws_user(), await make_ws_user()
    alice_tab = await ws_open(url, alice.token)
    bob_tab = await ws_open(url, bob.token)
    sent = [await publish(alice_tab, to_user(bob), {"n": n}) for n in range(1, 4)]
    assert seqs_of(await bob_tab.messages(3)) == [1, 2, 3]
    await bob_tab.close()
    sent += [await publish(alice_tab, to_user(bob), {"n": n}) for n in range(4, 8)]
    return alice_tab, bob, sent


@BVJ
@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_reconnecting_with_last_seq_replays_exactly_the_missed_messages_then_live_ones(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    url = await serve_gateway()
    alice_tab, bob, sent = await _missed_three_of_seven(url, ws_open, make_ws_user)

    bob_tab = await ws_open(url, bob.token, last_seq=3)

    assert bob_tab.welcome["last_seq"] == 7
    replayed = await bob_tab.messages(4)
    assert seqs_of(replayed) == [4, 5, 6, 7]
    assert ids_of(replayed) == sent[3:]
    assert [f["data"] for f in replayed] == [{"n": n} for n in range(4, 8)]
    assert {f["from"] for f in replayed} == {alice_tab.user_id}
    live = await publish(alice_tab, to_user(bob), {"n": 8})
    assert (await next_message_is(bob_tab, live))["seq"] == 8


@BVJ
@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_a_resume_message_replays_like_the_last_seq_query(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    url = await serve_gateway()
    alice_tab, bob, sent = await _missed_three_of_seven(url, ws_open, make_ws_user)
    bob_tab = await ws_open(url, bob.token)

    await bob_tab.send("resume", last_seq=3)

    replayed = await bob_tab.messages(4)
    assert (seqs_of(replayed), ids_of(replayed)) == ([4, 5, 6, 7], sent[3:])
    live = await publish(alice_tab, to_user(bob), {"n": 8})
    assert (await next_message_is(bob_tab, live))["seq"] == 8


@BVJ
@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_last_seq_at_the_head_replays_nothing_and_zero_replays_everything(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    url = await serve_gateway()
    alice_tab, bob, sent = await _missed_three_of_seven(url, ws_open, make_ws_user)

    up_to_date = await ws_open(url, bob.token, last_seq=7)
    from_scratch = await ws_open(url, bob.token, last_seq=0)

    everything = await from_scratch.messages(7)
    assert (seqs_of(everything), ids_of(everything)) == (list(range(1, 8)), sent)
    live = await publish(alice_tab, to_user(bob), {"n": 8})
    assert (await next_message_is(up_to_date, live))["seq"] == 8
    assert (await next_message_is(from_scratch, live))["seq"] == 8


@BVJ
@pytest.mark.L2
@pytest.mark.L3
async def test_messages_published_during_the_replay_arrive_once_in_order(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    """The hand-over from replay to live delivery neither skips nor repeats a message."""
    url = await serve_gateway(**FAST)
    alice, bob = await make_ws_user(), await make_ws_user()
    alice_tab = await ws_open(url, alice.token)
    backlog = [await publish(alice_tab, to_user(bob), {"n": n}) for n in range(60)]

    async def keep_publishing() -> list[str]:
        return [await publish(alice_tab, to_user(bob), {"n": n}) for n in range(60, 120)]

    publishing = asyncio.create_task(keep_publishing())
    bob_tab = await ws_open(url, bob.token, last_seq=0)
    frames = await bob_tab.messages(120)
    live = await publishing

    assert seqs_of(frames) == list(range(1, 121)), "a message skipped or repeated at hand-over"
    assert ids_of(frames) == backlog + live
    sentinel = await publish(alice_tab, to_user(bob), {"n": 120})
    assert (await next_message_is(bob_tab, sentinel))["seq"] == 121


@BVJ_004
@pytest.mark.L2
@pytest.mark.L3
async def test_reconnecting_to_another_instance_resumes_from_the_shared_stream(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    first, second = await serve_gateway(instance=0), await serve_gateway(instance=1)
    alice_tab, bob, sent = await _missed_three_of_seven(first, ws_open, make_ws_user)

    bob_tab = await ws_open(second, bob.token, last_seq=3)

    assert bob_tab.welcome["instance"] != alice_tab.welcome["instance"]
    assert (bob_tab.welcome["user_id"], bob_tab.welcome["last_seq"]) == (bob.user_id, 7)
    replayed = await bob_tab.messages(4)
    assert (seqs_of(replayed), ids_of(replayed)) == ([4, 5, 6, 7], sent[3:])
    live = await publish(alice_tab, to_user(bob), {"n": 8})
    assert (await next_message_is(bob_tab, live))["seq"] == 8


@BVJ_004
@pytest.mark.L2
@pytest.mark.L3
async def test_a_session_resumes_as_itself_after_a_reconnect(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    """State recovery: same user and session, a new connection, the stream's position."""
    url = await serve_gateway()
    _, bob, _ = await _missed_three_of_seven(url, ws_open, make_ws_user)
    before = await ws_open(url, bob.token, last_seq=7)
    await before.close()

    after = await ws_open(url, bob.token, last_seq=7)

    assert after.welcome["user_id"] == before.welcome["user_id"] == bob.user_id
    assert after.welcome["session_id"] == before.welcome["session_id"] == bob.tokens.session_id
    assert after.welcome["connection_id"] != before.welcome["connection_id"]
    assert after.welcome["last_seq"] == 7
    if not after.welcome["leader"]:  # the old tab's close may be processed just after
        await after.expect("leader")  # a condition; its latency is test_bench's


REPLAY_BUFFER = 5
MANY = 250  # over two of Redis' stream nodes (100 entries): an approximate trim happens


@BVJ
@pytest.mark.L2
@pytest.mark.L3
async def test_a_replay_older_than_the_buffer_is_reported_then_continues_from_the_oldest(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    url = await serve_gateway(APEX_WS_REPLAY_BUFFER=str(REPLAY_BUFFER), **FAST)
    alice, bob = await make_ws_user(), await make_ws_user()
    alice_tab = await ws_open(url, alice.token)
    sent = [await publish(alice_tab, to_user(bob), {"n": n}) for n in range(MANY)]

    bob_tab = await ws_open(url, bob.token, last_seq=0)

    error = await bob_tab.expect("error", code="replay_truncated")
    assert not [f for f in bob_tab.inbox if f["type"] == "message"], "messages before the error"
    oldest = error["oldest_seq"]
    assert isinstance(oldest, int), error
    # The buffer keeps at least APEX_WS_REPLAY_BUFFER messages (MAXLEN ~ may keep more).
    assert 1 < oldest <= MANY - REPLAY_BUFFER + 1, error
    rest = await bob_tab.messages(MANY - oldest + 1)
    assert seqs_of(rest) == list(range(oldest, MANY + 1))
    assert ids_of(rest) == sent[oldest - 1 :]
    live = await publish(alice_tab, to_user(bob), {"n": MANY})
    assert (await next_message_is(bob_tab, live))["seq"] == MANY + 1


@BVJ
@pytest.mark.L2
@pytest.mark.L3
async def test_a_replay_within_the_buffer_is_not_truncated(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    url = await serve_gateway(APEX_WS_REPLAY_BUFFER=str(REPLAY_BUFFER), **FAST)
    alice, bob = await make_ws_user(), await make_ws_user()
    alice_tab = await ws_open(url, alice.token)
    sent = [await publish(alice_tab, to_user(bob), {"n": n}) for n in range(MANY)]

    bob_tab = await ws_open(url, bob.token, last_seq=MANY - 2)

    tail = await bob_tab.messages(2)
    assert (seqs_of(tail), ids_of(tail)) == ([MANY - 1, MANY], sent[-2:])
    assert not [f for f in bob_tab.inbox if f["type"] == "error"], bob_tab.inbox
