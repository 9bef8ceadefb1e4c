"""Publishing through the gateway and checking what it delivers.

Public: `publish` (waits for the ack), `to_user` (the `to` of one user's stream),
`next_message_is` (nothing came before it), the seqs and ids of delivered frames, and
`BROADCAST_PERMISSION` (what a user needs to publish to "broadcast": grant it with
`make_ws_user(permissions=[BROADCAST_PERMISSION])`).
"""

from __future__ import annotations

from typing import Any

from ws_tests.client import DEFAULT_TIMEOUT, Frame, WsClient
from ws_tests.users import WsUser

__all__ = ["BROADCAST_PERMISSION", "ids_of", "next_message_is", "publish", "seqs_of", "to_user"]

# The gateway's default APEX_WS_BROADCAST_PERMISSION.
BROADCAST_PERMISSION = "realtime:broadcast"


def to_user(user: WsUser | WsClient | str) -> str:
    """The `to` of a message for one user: "user:<uid>"."""
    user_id = user if isinstance(user, str) else user.user_id
    return f"user:{user_id}"


async def publish(
    client: WsClient,
    to: str,
    data: dict[str, Any] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> str:
    """Publish `data` to `to` through `client`, wait for the ack; return the message id."""
    payload = data if data is not None else {}
    reply = await client.request("publish", to=to, data=payload, timeout=timeout)
    assert reply["type"] == "ack", f"publish to {to} was not acknowledged: {reply}"
    return str(reply["id"])


async def next_message_is(
    client: WsClient, message_id: str, *, timeout: float = DEFAULT_TIMEOUT
) -> Frame:
    """The next message `client` delivers is `message_id`: nothing (a duplicate, a stray
    message) came before it."""
    frame = await client.expect("message", timeout=timeout)
    assert frame.get("id") == message_id, f"expected message {message_id} next, got {frame}"
    return frame


def seqs_of(frames: list[Frame]) -> list[int]:
    """The `seq` of each delivered frame, in order."""
    return [int(frame["seq"]) for frame in frames]


def ids_of(frames: list[Frame]) -> list[str]:
    """The message `id` of each delivered frame, in order."""
    return [str(frame["id"]) for frame in frames]
