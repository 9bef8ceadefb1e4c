"""001#29 load balancing across gateway instances: distribution, session affinity, failover.

The rules under test (CONTRACT4): `/instances` lists the live instances (id, url,
connections); `apex.gateway.routing.pick_instance(user_id, ids)` is rendezvous hashing, so
every balancer with the same live set sends a user to the same instance, and when an
instance dies only its users move. A user who lost an instance reconnects to the new pick
with `last_seq` and gets every message published meanwhile, once.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import pytest

from apex_testkit import eventually
from ws_tests.client import Connect, Frame, WsClient, stays_open
from ws_tests.gateways import GatewayHandle, Gateways
from ws_tests.users import MakeUser

BALANCING = pytest.mark.bvj(
    segment="enterprise", goal="Scalability: users spread over instances and survive one's loss",
    mrr=12000, scenario="001#29",
)  # fmt: skip
pytestmark = [BALANCING, pytest.mark.L3]

TTL = 1.5


def _pick(user_id: str, ids: list[str]) -> str:
    from apex.gateway.routing import pick_instance  # noqa: PLC0415 - the SUT's own function

    return pick_instance(user_id, ids)


async def _fleet(gateways: Gateways, count: int) -> dict[str, GatewayHandle]:
    fleet = {}
    for n in range(count):
        name = f"gw{n}-{uuid.uuid4().hex[:6]}"
        fleet[name] = await gateways.start(
            APEX_GATEWAY_INSTANCE_ID=name, APEX_WS_INSTANCE_TTL=str(TTL), APEX_WS_RATE="1000/1"
        )
    return fleet


def _port(url: str) -> int | None:
    return urlsplit(url).port


async def _live(fleet: dict[str, GatewayHandle]) -> dict[str, str]:
    """id -> ws URL of every live instance (other gateways of this worker's namespace may
    be alive too: they are part of the fleet a balancer sees)."""
    listed = await next(iter(fleet.values())).instances()
    return {str(i["id"]): str(i["url"]) for i in listed}


async def test_instances_agree_on_the_live_set_and_users_land_on_their_pick(
    gateways: Gateways, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    fleet = await _fleet(gateways, 3)
    live = await _live(fleet)
    assert set(fleet) <= set(live), live
    for name, gateway in fleet.items():  # every instance sees the same fleet, usable URLs
        assert _port(live[name]) == _port(gateway.url), live
        assert set(fleet) <= {i["id"] for i in await gateway.instances()}
    # The balancer fronts this test's fleet; other live instances (other tests' gateways on
    # the worker's Redis) run other settings and are not behind it.
    ids = sorted(set(live) & set(fleet))
    users = [await make_ws_user() for _ in range(12)]

    placed: dict[str, WsClient] = {}
    for user in users:
        pick = _pick(user.user_id, ids)
        placed[user.user_id] = await ws_open(live[pick], user.token)
        assert placed[user.user_id].welcome["instance"] == pick

    assert len({c.welcome["instance"] for c in placed.values()}) >= 2, "no distribution"
    # Affinity: the same user asks again (new tab, another balancer): the same instance.
    for user in users[:4]:
        assert _pick(user.user_id, list(reversed(ids))) == placed[user.user_id].welcome["instance"]
    # Each of our instances counts what landed on it.
    for name in fleet:
        mine = sum(1 for c in placed.values() if c.welcome["instance"] == name)

        async def settled(name: str = name, mine: int = mine) -> bool:
            health = (await fleet[name].healthz()).json()
            return bool(health["connections"] == mine)

        await eventually(settled, timeout=5, message=f"{name} counts {mine}")


async def test_when_an_instance_dies_only_its_users_move_and_nothing_is_lost(
    gateways: Gateways, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    fleet = await _fleet(gateways, 3)
    live = await _live(fleet)
    # The balancer fronts this test's fleet; other live instances (other tests' gateways on
    # the worker's Redis) run other settings and are not behind it.
    ids = sorted(set(live) & set(fleet))
    users = [await make_ws_user() for _ in range(12)]
    home = {u.user_id: _pick(u.user_id, ids) for u in users}
    victim = max(fleet, key=lambda name: sum(1 for h in home.values() if h == name))
    survivors = [name for name in ids if name != victim]
    publisher_user = await make_ws_user()
    publisher = await ws_open(live[_pick(publisher_user.user_id, survivors)], publisher_user.token)
    clients = {u.user_id: await ws_open(live[home[u.user_id]], u.token) for u in users}
    for user in users:  # a first message each, seen live
        reply = await publisher.request("publish", to=f"user:{user.user_id}", data={"n": 0})
        assert reply["type"] == "ack", reply
    last_seen = {uid: (await c.expect("message"))["seq"] for uid, c in clients.items()}

    await fleet[victim].kill()
    for n in (1, 2, 3):  # published while the victim's users are offline
        for user in users:
            reply = await publisher.request("publish", to=f"user:{user.user_id}", data={"n": n})
            assert reply["type"] == "ack", reply
    watcher = next(g for name, g in fleet.items() if name != victim)

    async def dropped() -> bool:
        listed = {i["id"] for i in await watcher.instances()}
        return victim not in listed and set(fleet) - {victim} <= listed

    await eventually(dropped, timeout=TTL + 5, message="the dead instance leaves /instances")

    moved = 0
    for user in users:
        new_home = _pick(user.user_id, survivors)
        if home[user.user_id] != victim:
            assert new_home == home[user.user_id], "a user of a live instance moved"
            frames = [await clients[user.user_id].expect("message") for _ in range(3)]
        else:
            moved += 1
            client = await ws_open(live[new_home], user.token, last_seq=last_seen[user.user_id])
            assert client.welcome["instance"] == new_home
            frames = await client.messages(3)
            await stays_open(client, 0.2)
            assert not [f for f in client.inbox if f["type"] == "message"], "duplicates"
        _assert_rest(frames, last_seen[user.user_id])
    assert moved >= 1


def _assert_rest(frames: list[Frame], last_seen: int) -> None:
    assert [f["seq"] for f in frames] == [last_seen + 1, last_seen + 2, last_seen + 3]
    assert [f["data"]["n"] for f in frames] == [1, 2, 3]
