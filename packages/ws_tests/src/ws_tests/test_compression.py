"""001#27 Message compression: permessage-deflate negotiation, fallback, bandwidth.

With APEX_WS_COMPRESSION=on the gateway accepts a client's permessage-deflate offer; with it
off, or for a client that offers nothing, the connection is uncompressed. Applications see
the same messages either way, and a compressed connection carries far fewer bytes for
repetitive JSON (measured on the wire with a TCP proxy).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from apex_testkit import FaultProxy, wait_for
from ws_tests.client import Connect, WsClient
from ws_tests.gateways import Serve
from ws_tests.messages import next_message_is, publish, to_user
from ws_tests.users import MakeUser, WsUser

BVJ = pytest.mark.bvj(
    segment="platform", goal="Bandwidth savings on chatty real-time traffic", mrr=5000,
    scenario="001#27",
)  # fmt: skip
pytestmark = [BVJ]

DEFLATE = "permessage-deflate"


def negotiated(client: WsClient) -> list[str]:
    """Extensions in use on the client's connection, and the server's answer header."""
    in_use = [str(extension.name) for extension in client.ws.protocol.extensions]
    response = client.ws.response
    assert response is not None
    header = response.headers.get("Sec-WebSocket-Extensions", "")
    assert (DEFLATE in header) == (DEFLATE in in_use), (header, in_use)
    return in_use


def big_json(size: int) -> dict[str, Any]:
    """Repetitive JSON like a table of agent results, about `size` bytes."""
    rows: list[dict[str, Any]] = []
    length = len(str(rows))  # of str(rows), kept up to date row by row (not recomputed)
    while length < size:
        n = len(rows)
        rows.append({"agent": "cost-optimizer", "step": n, "status": "ok", "tokens": 1200 + n})
        length += len(str(rows[-1])) + (2 if n else 0)  # ", " between rows
    return {"rows": rows, "note": 'Grüße, 東京, emoji 🚀, quotes " and \\ backslash'}


@pytest.mark.L2
@pytest.mark.L3
async def test_deflate_is_negotiated_when_offered_and_enabled(
    serve_gateway: Serve, ws_open: Connect, ws_user: WsUser
) -> None:
    url = await serve_gateway(APEX_WS_COMPRESSION="on")

    client = await ws_open(url, ws_user.token, compression="deflate")

    assert negotiated(client) == [DEFLATE]
    assert (await client.request("ping"))["type"] == "pong"


@pytest.mark.L2
@pytest.mark.L3
async def test_no_compression_for_a_client_that_offers_none(
    serve_gateway: Serve, ws_open: Connect, ws_user: WsUser
) -> None:
    url = await serve_gateway(APEX_WS_COMPRESSION="on")

    client = await ws_open(url, ws_user.token, compression=None)

    assert negotiated(client) == []
    assert (await client.request("ping"))["type"] == "pong"


@pytest.mark.L2
@pytest.mark.L3
async def test_no_compression_when_the_gateway_has_it_off(
    serve_gateway: Serve, ws_open: Connect, ws_user: WsUser
) -> None:
    url = await serve_gateway(APEX_WS_COMPRESSION="off")

    client = await ws_open(url, ws_user.token, compression="deflate")

    assert negotiated(client) == []
    assert (await client.request("ping"))["type"] == "pong"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.parametrize("setting", ["on", "off"])
async def test_messages_are_identical_with_and_without_compression(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser, setting: str
) -> None:
    url = await serve_gateway(APEX_WS_COMPRESSION=setting)
    alice, bob = await make_ws_user(), await make_ws_user()
    senders = [
        await ws_open(url, alice.token, compression="deflate"),
        await ws_open(url, alice.token, compression=None),
    ]
    tabs = [
        await ws_open(url, bob.token, compression="deflate"),
        await ws_open(url, bob.token, compression=None),
    ]
    assert negotiated(tabs[0]) == ([DEFLATE] if setting == "on" else [])
    payloads = [big_json(40_000), {"tiny": 1}, {"text": "ünïcödé ✓", "nested": {"a": [None, True]}}]

    sent = [await publish(sender, to_user(bob), data) for data in payloads for sender in senders]

    expected = [data for data in payloads for _ in senders]
    for tab in tabs:
        frames = await tab.messages(len(sent))
        assert [f["id"] for f in frames] == sent
        assert [f["data"] for f in frames] == expected
    sentinel = await publish(senders[0], to_user(bob), {})
    for tab in tabs:
        await next_message_is(tab, sentinel)


@pytest.mark.L2
@pytest.mark.L3
async def test_compression_cuts_the_bytes_on_the_wire(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    url = await serve_gateway(APEX_WS_COMPRESSION="on")
    alice, bob = await make_ws_user(), await make_ws_user()
    data = big_json(40_000)
    with (
        FaultProxy(url, name="compressed") as compressed,
        FaultProxy(url, name="plain") as plain,
        FaultProxy(url, name="sender") as sender_link,
    ):
        alice_tab = await ws_open(sender_link.url_for(url), alice.token, compression="deflate")
        tabs = {
            "compressed": await ws_open(compressed.url_for(url), bob.token, compression="deflate"),
            "plain": await ws_open(plain.url_for(url), bob.token, compression=None),
        }
        for proxy in (compressed, plain, sender_link):
            proxy.reset_stats()

        message_id = await publish(alice_tab, to_user(bob), data)
        for tab in tabs.values():
            frame = await next_message_is(tab, message_id)
            assert frame["data"] == data

        # Counted by the proxy thread as it forwards: let it finish counting the frame
        # (at least the compact JSON of the data went through uncompressed).
        least = len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())
        wait_for(lambda: plain.stats.bytes_down >= least, timeout=5, message="plain bytes")
        down = {"compressed": compressed.stats.bytes_down, "plain": plain.stats.bytes_down}
        up = sender_link.stats.bytes_up

    assert down["compressed"] * 5 < down["plain"], f"deflate saved too little: {down}"
    assert up * 5 < down["plain"], f"the gateway did not inflate a compressed publish: {up}"
