"""A WebSocket client of the Apex gateway, speaking its JSON protocol (apex.v1).

Public: any team's tests may import these. `open_ws(base_url, token)` connects (token in
the Authorization header, in the `apex.bearer.<token>` subprotocol as browsers send it,
or in the query, which the gateway refuses; optional `last_seq`, permessage-deflate or
not) and returns a `WsClient` once the gateway's welcome frame arrived; a refused
handshake raises `HandshakeRefused` with the HTTP status and error body. `Connect` is the type of
the connect functions the fixtures hand out (`ws_connect`, `ws_open`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

__all__ = [
    "BEARER_PROTOCOL",
    "DEFAULT_TIMEOUT",
    "SUBPROTOCOL",
    "Connect",
    "Frame",
    "HandshakeRefused",
    "WsClient",
    "close_quietly",
    "freeze",
    "open_ws",
    "reply_to",
    "stays_open",
    "thaw",
]

# A frame as JSON decodes it; a binary frame is {"type": "binary", "data": bytes}.
Frame = dict[str, Any]
# Seconds a wait on the gateway lasts unless the caller says otherwise.
DEFAULT_TIMEOUT = 10.0
# The protocol the gateway speaks, and the prefix of the subprotocol that carries a
# browser's token (the WebSocket API cannot set an Authorization header).
SUBPROTOCOL = "apex.v1"
BEARER_PROTOCOL = "apex.bearer."
# Where `open_ws` puts the token: the Authorization header, the `apex.bearer.<token>`
# subprotocol (browsers), or the `access_token` query parameter (refused by the gateway).
TokenIn = Literal["header", "protocol", "query"]


class HandshakeRefused(AssertionError):
    """The gateway answered the upgrade with an HTTP error instead of a WebSocket."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"handshake refused: {status} {body}")
        self.status = status
        self.body = body


@dataclass
class WsClient:
    """One connection to the gateway, speaking its JSON protocol (apex.v1).

    Frames that a test did not ask for yet are kept in order in `inbox`, so waiting
    for one kind of frame never loses another.
    """

    ws: ClientConnection
    welcome: Frame
    inbox: list[Frame] = field(default_factory=list)

    @property
    def user_id(self) -> str:
        return str(self.welcome["user_id"])

    async def send(self, type: str, **fields: Any) -> str:
        """Send a frame of `type`; return its id (made up when not given)."""
        message_id = str(fields.pop("id", uuid.uuid4().hex))
        await self.ws.send(json.dumps({"type": type, "id": message_id, **fields}))
        return message_id

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def _next(self, timeout: float) -> Frame:
        # asyncio.timeout, not wait_for: no task per frame (the benchmarks receive
        # thousands of frames a second in this process).
        async with asyncio.timeout(timeout):
            raw = await self.ws.recv()
        if isinstance(raw, bytes):
            return {"type": "binary", "data": raw}
        frame: Frame = json.loads(raw)
        return frame

    async def expect(self, type: str, *, timeout: float = DEFAULT_TIMEOUT, **match: Any) -> Frame:
        """The next frame of `type` whose fields equal `match` (others stay in the inbox)."""

        def fits(frame: Frame) -> bool:
            return frame.get("type") == type and all(frame.get(k) == v for k, v in match.items())

        for index, frame in enumerate(self.inbox):
            if fits(frame):
                return self.inbox.pop(index)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"no {type} frame matching {match} in {timeout} s; got {self.inbox}"
                )
            try:
                frame = await self._next(remaining)
            except TimeoutError:
                continue
            if fits(frame):
                return frame
            self.inbox.append(frame)

    async def request(self, type: str, *, timeout: float = DEFAULT_TIMEOUT, **fields: Any) -> Frame:
        """Send a frame and return the gateway's reply to it (any frame carrying its id)."""
        message_id = await self.send(type, **fields)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for index, frame in enumerate(self.inbox):
            if frame.get("id") == message_id and frame.get("type") != "message":
                return self.inbox.pop(index)
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no reply to {type} {message_id} in {timeout} s")
            frame = await self._next(remaining)
            if frame.get("id") == message_id and frame.get("type") != "message":
                return frame
            self.inbox.append(frame)

    async def messages(self, count: int, *, timeout: float = DEFAULT_TIMEOUT) -> list[Frame]:
        """The next `count` delivered messages (type "message"), in arrival order."""
        return [await self.expect("message", timeout=timeout) for _ in range(count)]

    async def closed(self, *, timeout: float = DEFAULT_TIMEOUT) -> tuple[int | None, str]:
        """Wait until the gateway closes the connection; return its close code and reason.

        Frames received meanwhile are kept in the inbox."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"connection still open after {timeout} s")
            try:
                self.inbox.append(await self._next(remaining))
            except ConnectionClosed as exc:
                return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")
            except TimeoutError:
                continue

    async def close(self) -> None:
        await self.ws.close()


# `await connect(...)` -> WsClient: what the `ws_connect` and `ws_open` fixtures hand out.
Connect = Callable[..., Awaitable[WsClient]]


async def open_ws(
    base_url: str,
    token: str | None,
    *,
    last_seq: int | None = None,
    token_in: TokenIn = "header",  # noqa: S107 - where the token goes, not a token
    compression: str | None = "deflate",
    max_size: int | None = 2**24,
) -> WsClient:
    """Connect to `base_url`/ws with `token` (sent as `token_in` says); HandshakeRefused
    if the gateway says no."""
    query: dict[str, str] = {}
    headers: dict[str, str] = {}
    subprotocols = [websockets.Subprotocol(SUBPROTOCOL)]
    if token is not None and token_in == "query":
        query["access_token"] = token
    elif token is not None and token_in == "protocol":
        subprotocols.append(websockets.Subprotocol(f"{BEARER_PROTOCOL}{token}"))
    elif token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if last_seq is not None:
        query["last_seq"] = str(last_seq)
    url = f"{base_url}/ws" + (f"?{urlencode(query)}" if query else "")
    try:
        ws = await websockets.connect(
            url,
            additional_headers=headers,
            compression=compression,
            max_size=max_size,
            open_timeout=DEFAULT_TIMEOUT,
            subprotocols=subprotocols,
        )
    except InvalidStatus as exc:
        body = exc.response.body or b"{}"
        raise HandshakeRefused(exc.response.status_code, json.loads(body)) from None
    client = WsClient(ws, welcome={})
    client.welcome = await client.expect("welcome")
    return client


async def close_quietly(client: WsClient, timeout: float = 2.0) -> None:
    """Close `client` within `timeout`, whatever state it is in (teardown: a closed one has
    nothing left to close). A frozen client (`freeze`) cannot read the gateway's half of a
    closing handshake: its socket is dropped at once instead of waiting out `timeout`."""
    transport = client.ws.transport
    if transport is not None and not transport.is_closing() and not transport.is_reading():
        transport.abort()
        return
    with contextlib.suppress(ConnectionClosed, OSError, TimeoutError):
        await asyncio.wait_for(client.close(), timeout)


async def reply_to(client: WsClient, message_id: str, *, timeout: float = DEFAULT_TIMEOUT) -> Frame:
    """The gateway's reply (any frame but a delivered message) to a frame sent earlier with
    `client.send`; other frames stay in the inbox."""
    for index, frame in enumerate(client.inbox):
        if frame.get("id") == message_id and frame.get("type") != "message":
            return client.inbox.pop(index)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (remaining := deadline - loop.time()) > 0:
        try:
            frame = await client._next(remaining)
        except TimeoutError:
            break
        if frame.get("id") == message_id and frame.get("type") != "message":
            return frame
        client.inbox.append(frame)
    raise AssertionError(f"no reply to {message_id} in {timeout} s; got {client.inbox}")


def freeze(client: WsClient) -> None:
    """The client stops reading its socket: it answers no ping and drains no frame."""
    transport = client.ws.transport
    assert transport is not None
    transport.pause_reading()


def thaw(client: WsClient) -> None:
    """The frozen client reads its socket again (what `freeze` stopped)."""
    transport = client.ws.transport
    assert transport is not None
    transport.resume_reading()


async def stays_open(client: WsClient, seconds: float) -> None:
    """Assert the gateway keeps `client` open for `seconds` (frames go to the inbox) and
    still answers it afterwards."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (remaining := deadline - loop.time()) > 0:
        try:
            client.inbox.append(await client._next(remaining))
        except TimeoutError:
            break
        except ConnectionClosed as exc:
            raise AssertionError(f"the gateway closed the connection: {exc.rcvd}") from None
    reply = await client.request("ping")
    assert reply["type"] == "pong", reply
