"""001#20 a broken or noisy client cannot degrade the gateway: frames it cannot use get
their documented answers.

The rules under test (CONTRACT4, Errors and close codes): a text frame that is not a JSON
object is answered `{"type":"error","code":"malformed"}` and the connection stays open; a
message of an unknown type is answered `unknown_type` (echoing its id); a text frame over
APEX_WS_MAX_MESSAGE bytes closes that connection 1009 "message too big", unprocessed, and
nobody else's. (Binary frames: `test_uploads.py`.)
"""

from __future__ import annotations

import json
import uuid

import pytest

from apex_testkit import eventually
from ws_tests.client import Connect
from ws_tests.gateways import Gateways
from ws_tests.messages import next_message_is, publish, to_user
from ws_tests.users import MakeUser, WsUser

BVJ = pytest.mark.bvj(
    segment="platform", goal="DoS prevention: a broken client gets an answer and hurts nobody",
    mrr=9000, scenario="001#20",
)  # fmt: skip
pytestmark = [BVJ]

MALFORMED = {
    "not-json": "hello gateway",
    "truncated": '{"type": "ping"',
    "array": '[{"type": "ping"}]',
    "string": '"ping"',
    "number": "42",
    "null": "null",
}


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@pytest.mark.parametrize("frame", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_a_malformed_text_frame_is_answered_malformed_and_the_connection_stays(
    ws_connect: Connect, ws_user: WsUser, frame: str
) -> None:
    client = await ws_connect(ws_user.token)

    await client.send_raw(frame)

    error = await client.expect("error")
    assert error["code"] == "malformed", error
    assert "id" not in error, error  # nothing to echo
    assert isinstance(error["detail"], str), error
    assert (await client.request("ping"))["type"] == "pong"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@pytest.mark.parametrize(
    "kind",
    ["teleport", "PING", "", None, 7, ["ping"], {"name": "ping"}],
    ids=["unknown", "case", "empty", "null", "number", "list", "object"],
)
async def test_an_unknown_type_is_answered_unknown_type_with_its_id(
    ws_connect: Connect, ws_user: WsUser, kind: object
) -> None:
    client = await ws_connect(ws_user.token)
    message_id = uuid.uuid4().hex

    await client.send_raw(json.dumps({"type": kind, "id": message_id, "data": {}}))

    error = await client.expect("error", id=message_id)
    assert error["code"] == "unknown_type", error
    assert (await client.request("ping"))["type"] == "pong"


@pytest.mark.L2
@pytest.mark.L3
async def test_a_text_frame_over_the_limit_closes_only_its_connection_1009_unprocessed(
    gateways: Gateways, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    limit = 4096
    gateway = await gateways.start(APEX_WS_MAX_MESSAGE=str(limit))
    sender, receiver = await make_ws_user(), await make_ws_user()
    sending, other_tab = (
        await ws_open(gateway.url, sender.token),
        await ws_open(gateway.url, sender.token),
    )
    receiving = await ws_open(gateway.url, receiver.token)
    envelope = {"type": "publish", "id": "big", "to": to_user(receiver), "data": {"b": ""}}
    filler = limit + 1 - len(json.dumps(envelope))
    oversized = json.dumps({**envelope, "data": {"b": "x" * filler}})
    assert len(oversized.encode()) == limit + 1

    await sending.send_raw(oversized)

    assert await sending.closed() == (1009, "message too big")

    async def counted_out() -> bool:
        return await gateway.connections() == 2

    await eventually(counted_out, timeout=10, message="the closed connection is not counted")
    # Not processed: the receiver's first message is the next one sent, and the sender's
    # other connection works.
    sentinel = await publish(other_tab, to_user(receiver), {"sentinel": True})
    assert (await next_message_is(receiving, sentinel))["seq"] == 1


@pytest.mark.L2
@pytest.mark.L3
async def test_a_text_frame_at_the_limit_is_processed(
    gateways: Gateways, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    limit = 4096
    gateway = await gateways.start(APEX_WS_MAX_MESSAGE=str(limit))
    sender, receiver = await make_ws_user(), await make_ws_user()
    sending, receiving = (
        await ws_open(gateway.url, sender.token),
        await ws_open(gateway.url, receiver.token),
    )
    envelope = {"type": "publish", "id": "fits", "to": to_user(receiver), "data": {"b": ""}}
    filler = limit - len(json.dumps(envelope))
    at_limit = json.dumps({**envelope, "data": {"b": "x" * filler}})
    assert len(at_limit.encode()) == limit

    await sending.send_raw(at_limit)

    assert (await sending.expect("ack", id="fits"))["type"] == "ack"
    assert (await next_message_is(receiving, "fits"))["data"] == {"b": "x" * filler}
