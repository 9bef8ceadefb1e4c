"""001#30 graceful shutdown: graceful close, message drain, state persistence.

The rules under test (CONTRACT4, Graceful shutdown): on SIGTERM the gateway stops
accepting (handshake 503 `draining`, /healthz 503), sends `{"type":"shutdown",
"reconnect":true}` to every connection, flushes send queues (up to APEX_WS_DRAIN_TIMEOUT),
closes them 1012 "restart", leaves `gw:instances` and exits. Clients reconnect to another
instance with `last_seq` and lose nothing.

The drain is made long enough to watch by one client that does not read (its queued
frames cannot be flushed until the drain timeout). The drain flushes what is queued before
it closes; and the whole shutdown is bounded (APEX_WS_DRAIN_TIMEOUT for the flush, then
APEX_WS_SHUTDOWN_GRACE for the rest) even when Redis hangs.
"""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import Callable

import httpx
import pytest

from apex_testkit import FaultProxy, RedisNamespace, eventually
from ws_tests.client import Connect, Frame, HandshakeRefused, WsClient, freeze, open_ws, thaw
from ws_tests.gateways import GatewayHandle, Gateways
from ws_tests.users import MakeUser, WsUser

SHUTDOWN = pytest.mark.bvj(
    segment="platform", goal="Deploys without dropped messages: drain, then hand over",
    mrr=5000, scenario="001#30",
)  # fmt: skip
pytestmark = [SHUTDOWN]

DRAIN = 6.0
SETTINGS = {
    "APEX_WS_DRAIN_TIMEOUT": str(DRAIN),
    "APEX_WS_INSTANCE_TTL": "60",  # leaving the list must come from deregistering, not expiry
    "APEX_WS_RATE": "100000/1",
    "APEX_WS_COMPRESSION": "off",
}


async def _stuck_consumer(
    gateway: GatewayHandle, publisher: WsClient, ws_open: Connect, user: WsUser
) -> WsClient:
    """A connection of `user` that does not read, with megabytes waiting for it."""
    stuck = await ws_open(gateway.url, user.token, compression=None)
    freeze(stuck)
    blob = base64.b64encode(os.urandom(24_000)).decode()
    for n in range(300):  # ~10 MB: more than the socket buffers, less than the send queue
        reply = await publisher.request(
            "publish", to=f"user:{user.user_id}", data={"n": n, "b": blob}
        )
        assert reply["type"] == "ack", reply
    return stuck


@pytest.mark.L3
async def test_sigterm_drains_refuses_newcomers_closes_1012_and_nothing_is_lost(
    gateways: Gateways, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    name = f"gw-draining-{uuid.uuid4().hex[:6]}"
    leaving = await gateways.start(APEX_GATEWAY_INSTANCE_ID=name, **SETTINGS)
    staying = await gateways.start(**SETTINGS)
    user, publisher_user, stuck_user, newcomer = [await make_ws_user() for _ in range(4)]
    publisher = await ws_open(staying.url, publisher_user.token)
    tab = await ws_open(leaving.url, user.token)
    for n in range(5):
        assert (await publisher.request("publish", to=f"user:{user.user_id}", data={"n": n}))[
            "type"
        ] == "ack"
    received: list[Frame] = await tab.messages(5)
    stuck = await _stuck_consumer(leaving, publisher, ws_open, stuck_user)
    assert name in {i["id"] for i in await staying.instances()}

    stopping = asyncio.create_task(leaving.stop())  # SIGTERM

    shutdown = await tab.expect("shutdown", timeout=10)
    assert shutdown["reconnect"] is True

    async def refused() -> HandshakeRefused | None:
        try:
            client = await open_ws(leaving.url, newcomer.token)
        except HandshakeRefused as refusal:
            return refusal
        await client.close()
        return None

    refusal = await eventually(refused, timeout=DRAIN / 2, message="handshake refused")
    assert refusal is not None
    assert (refusal.status, refusal.body["error"]) == (503, "draining")
    async with httpx.AsyncClient(base_url=leaving.http, timeout=5) as client:
        assert (await client.get("/healthz")).status_code == 503

    # Messages published while it drains are not lost, wherever they end up.
    for n in range(5, 8):
        assert (await publisher.request("publish", to=f"user:{user.user_id}", data={"n": n}))[
            "type"
        ] == "ack"
    code, reason = await tab.closed(timeout=DRAIN + 10)
    assert (code, reason) == (1012, "restart")
    received += [f for f in tab.inbox if f.get("type") == "message"]
    await stopping

    # It left the fleet by deregistering (its TTL is a minute).
    assert name not in {i["id"] for i in await staying.instances()}
    resumed = await ws_open(staying.url, user.token, last_seq=received[-1]["seq"])
    rest = await resumed.messages(8 - len(received))
    seqs = [f["seq"] for f in received + rest]
    assert seqs == list(range(seqs[0], seqs[0] + 8)), seqs
    assert [f["data"]["n"] for f in received + rest] == list(range(8))

    # The consumer that could not be flushed resumes elsewhere without a gap either.
    thaw(stuck)
    await stuck.closed(timeout=DRAIN + 10)
    got = [f for f in stuck.inbox if f.get("type") == "message"]
    last = got[-1]["seq"] if got else stuck.welcome["last_seq"]
    again = await ws_open(staying.url, stuck_user.token, last_seq=last)
    rest_stuck = await again.messages(300 - len(got), timeout=30)
    assert [f["data"]["n"] for f in got + rest_stuck] == list(range(300))


@pytest.mark.L3
async def test_idle_instance_shuts_down_promptly_with_every_client_told(
    gateways: Gateways, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    leaving = await gateways.start(**SETTINGS)
    clients = [await ws_open(leaving.url, (await make_ws_user()).token) for _ in range(5)]

    await leaving.stop()

    for client in clients:
        await client.expect("shutdown", reconnect=True, timeout=5)
        assert await client.closed(timeout=5) == (1012, "restart")
    with pytest.raises((OSError, HandshakeRefused, TimeoutError)):
        await open_ws(leaving.url, (await make_ws_user()).token)


@pytest.mark.L2
@pytest.mark.L3
async def test_the_drain_delivers_every_queued_message_before_it_closes(
    gateways: Gateways, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    # The flush, not the drain timeout, ends this drain.
    leaving = await gateways.start(**{**SETTINGS, "APEX_WS_DRAIN_TIMEOUT": "60"})
    user, publisher_user = await make_ws_user(), await make_ws_user()
    publisher = await ws_open(leaving.url, publisher_user.token)
    reader = await ws_open(leaving.url, user.token)
    stuck = await ws_open(leaving.url, user.token, compression=None)
    freeze(stuck)
    blob = base64.b64encode(os.urandom(24_000)).decode()
    count = 200  # ~6 MB: more than the socket buffers hold, less than the send queue
    for n in range(count):
        reply = await publisher.request(
            "publish", to=f"user:{user.user_id}", data={"n": n, "b": blob}
        )
        assert reply["type"] == "ack", reply
    # The user's feed hands each message to both tabs at once: when the reading tab has
    # them all, the frozen one has them all queued.
    await reader.messages(count, timeout=30)

    stopping = asyncio.create_task(leaving.stop())
    thaw(stuck)

    assert await stuck.closed(timeout=60) == (1012, "restart")
    await stopping
    kinds = [frame["type"] for frame in stuck.inbox]
    delivered = [frame["data"]["n"] for frame in stuck.inbox if frame["type"] == "message"]
    assert delivered == list(range(count)), "the drain closed before its queue was flushed"
    assert kinds[-1] == "shutdown", kinds[-3:]  # told to reconnect after the last message


@pytest.mark.L2
async def test_a_shutdown_with_redis_hanging_ends_within_its_bounds(
    gateways: Gateways,
    ws_open: Connect,
    make_ws_user: MakeUser,
    fault_proxy: Callable[[str], FaultProxy],
    redis_namespace: RedisNamespace,
) -> None:
    """Redis stops answering (a blackhole: the gateway's calls wait for their timeouts):
    the shutdown still tells and closes every client and returns within the drain timeout
    plus the shutdown grace (with slack for a busy machine), never hanging on Redis."""
    drain, grace = 0.4, 0.4
    proxy = fault_proxy(redis_namespace.url)
    leaving = await gateways.start(
        APEX_REDIS_URL=proxy.url_for(redis_namespace.url),
        APEX_WS_DRAIN_TIMEOUT=str(drain),
        APEX_WS_SHUTDOWN_GRACE=str(grace),
        APEX_WS_INSTANCE_TTL="0.6",  # heartbeats (Redis calls) every 0.2 s
    )
    client = await ws_open(leaving.url, (await make_ws_user()).token)

    proxy.blackhole()
    await asyncio.wait_for(leaving.stop(), timeout=drain + grace + 10)

    await client.expect("shutdown", reconnect=True)
    assert await client.closed() == (1012, "restart")
