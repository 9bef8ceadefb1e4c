"""001#19 Multi-tab synchronization: every tab gets each message once, in the same order;
exactly one tab of a user leads, and leadership moves to the next oldest tab when it closes.

Tabs are connections of one user: several connections of one session, or of several sessions
(two sign-ins), on one or several gateway instances.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from auth_tests.client import login

from ws_tests.client import Connect, WsClient
from ws_tests.gateways import FAST, Gateways, Serve
from ws_tests.messages import ids_of, next_message_is, publish, seqs_of, to_user
from ws_tests.users import MakeUser

BVJ = pytest.mark.bvj(
    segment="mid", goal="Power users work in many tabs without duplicate or missing updates",
    mrr=6000, scenario="001#19",
)  # fmt: skip
pytestmark = [BVJ]

# A handover is waited for as a condition (the `expect` deadline, DEFAULT_TIMEOUT): how
# fast it comes (the contract's 1 s) is measured by test_bench's leader-handover benchmark.


async def no_leader_frame(tab: WsClient, sender: WsClient) -> None:
    """`tab` got no `leader` frame so far: checked once a later message has reached it."""
    sentinel = await publish(sender, to_user(tab.user_id), {"sentinel": True})
    await tab.expect("message", id=sentinel)
    assert not [f for f in tab.inbox if f["type"] == "leader"], f"unexpected leader: {tab.inbox}"


@pytest.mark.L2
@pytest.mark.L3
async def test_every_tab_gets_each_message_exactly_once_in_the_same_order(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    first, second = await serve_gateway(instance=0, **FAST), await serve_gateway(instance=1, **FAST)
    bob = await make_ws_user()
    tabs = [
        await ws_open(first, bob.token),
        await ws_open(first, bob.token),
        await ws_open(second, bob.token),
    ]
    publishers = [
        await ws_open(url, (await make_ws_user()).token) for url in (first, second, first)
    ]

    async def publish_all(publisher: WsClient, tag: int) -> list[str]:
        return [await publish(publisher, to_user(bob), {"p": tag, "n": n}) for n in range(10)]

    sent = await asyncio.gather(*(publish_all(p, i) for i, p in enumerate(publishers)))

    received = [await tab.messages(30) for tab in tabs]
    assert seqs_of(received[0]) == list(range(1, 31))
    assert sorted(ids_of(received[0])) == sorted(i for ids in sent for i in ids)
    for frames in received[1:]:
        assert [(f["seq"], f["id"]) for f in frames] == [(f["seq"], f["id"]) for f in received[0]]
    # Exactly once: the next message on every tab is the next one sent.
    sentinel = await publish(publishers[0], to_user(bob), {"sentinel": True})
    for tab in tabs:
        assert (await next_message_is(tab, sentinel))["seq"] == 31


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_tabs_of_several_sign_ins_of_one_user_are_all_synchronised(
    serve_gateway: Serve,
    ws_open: Connect,
    make_ws_user: MakeUser,
    ws_auth_client: httpx.AsyncClient,
) -> None:
    url = await serve_gateway()
    alice, bob = await make_ws_user(), await make_ws_user()
    other_session = await login(ws_auth_client, bob.key_user.api_key)
    assert other_session.session_id != bob.tokens.session_id
    tabs = [await ws_open(url, bob.token), await ws_open(url, other_session.access)]
    alice_tab = await ws_open(url, alice.token)

    assert {tab.welcome["session_id"] for tab in tabs} == {
        bob.tokens.session_id, other_session.session_id,
    }  # fmt: skip
    assert len({tab.welcome["connection_id"] for tab in tabs}) == 2
    sent = [await publish(alice_tab, to_user(bob), {"n": n}) for n in range(3)]
    for tab in tabs:
        frames = await tab.messages(3)
        assert (seqs_of(frames), ids_of(frames)) == ([1, 2, 3], sent)


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_a_tab_publishing_to_its_own_user_reaches_every_tab_including_itself(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    url = await serve_gateway()
    bob = await make_ws_user()
    tabs = [await ws_open(url, bob.token) for _ in range(3)]

    message_id = await publish(tabs[1], to_user(bob), {"draft": "saved"})

    frames = [await tab.expect("message") for tab in tabs]
    assert {(f["seq"], f["id"], f["from"]) for f in frames} == {(1, message_id, bob.user_id)}
    sentinel = await publish(tabs[0], to_user(bob), {"sentinel": True})
    for tab in tabs:
        assert (await next_message_is(tab, sentinel))["seq"] == 2


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_the_oldest_tab_leads_and_hands_over_to_the_next_oldest_when_it_closes(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    url = await serve_gateway()
    bob, carol = await make_ws_user(), await make_ws_user()
    tabs = [await ws_open(url, bob.token) for _ in range(3)]
    carol_tab = await ws_open(url, carol.token)

    assert [tab.welcome["leader"] for tab in tabs] == [True, False, False]
    assert carol_tab.welcome["leader"] is True, "leadership is per user"

    await tabs[0].close()
    await tabs[1].expect("leader")
    await no_leader_frame(tabs[2], carol_tab)
    await no_leader_frame(carol_tab, tabs[1])

    await tabs[1].close()
    await tabs[2].expect("leader")
    newcomer = await ws_open(url, bob.token)
    assert newcomer.welcome["leader"] is False, "a new tab does not take over from a live leader"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_tabs_opened_at_the_same_time_elect_exactly_one_leader(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    url = await serve_gateway()
    bob = await make_ws_user()

    tabs = await asyncio.gather(*(ws_open(url, bob.token) for _ in range(6)))

    leaders = [tab for tab in tabs if tab.welcome["leader"]]
    assert len(leaders) == 1, [tab.welcome for tab in tabs]
    # Closing the leader makes exactly one of the others lead.
    await leaders[0].close()
    rest = [tab for tab in tabs if tab is not leaders[0]]
    waiting = {asyncio.create_task(tab.expect("leader")): tab for tab in rest}
    told, others = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    for task in others:
        task.cancel()  # cancelling a recv loses no frame: later ones stay for the check below
    await asyncio.wait(waiting)
    assert len(told) == 1, [waiting[task].welcome for task in told]
    (first,) = told
    first.result()  # no leader at all: the expect deadline's error
    new_leader = waiting[first]
    for tab in rest:
        if tab is not new_leader:
            await no_leader_frame(tab, new_leader)


@pytest.mark.L2
@pytest.mark.L3
async def test_leadership_is_per_user_across_gateway_instances(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    first, second = await serve_gateway(instance=0), await serve_gateway(instance=1)
    bob = await make_ws_user()
    oldest = await ws_open(first, bob.token)
    on_second = [await ws_open(second, bob.token), await ws_open(second, bob.token)]

    assert oldest.welcome["leader"] is True
    assert [tab.welcome["leader"] for tab in on_second] == [False, False]

    await oldest.close()
    await on_second[0].expect("leader")
    await no_leader_frame(on_second[1], on_second[0])


@pytest.mark.L3
async def test_a_leader_on_a_crashed_instance_is_replaced(
    gateways: Gateways, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    """A crash sends no close: the survivors learn it from the instance registry, whose
    entries expire after APEX_WS_INSTANCE_TTL without heartbeat."""
    settings = {"APEX_WS_INSTANCE_TTL": "2"}
    doomed, survivor = await gateways.start(**settings), await gateways.start(**settings)
    bob = await make_ws_user()
    leader = await ws_open(doomed.url, bob.token)
    follower = await ws_open(survivor.url, bob.token)
    assert (leader.welcome["leader"], follower.welcome["leader"]) == (True, False)

    await doomed.kill()

    await follower.expect("leader", timeout=2 + 3)
