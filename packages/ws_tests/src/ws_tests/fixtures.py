"""Fixtures of the ws test package (pytest11 plugin `ws_tests`).

`ws_connect(token)` opens a WebSocket to the gateway wired for the run's level: at L2 the
gateway (and the auth service it trusts) serve on loopback ports inside the test's event
loop, at L3 they are `python -m apex.gateway` / `apex.auth` processes, at L4 the target's
URLs. Users and tokens come from the identity team's fixtures (auth_tests).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import pytest
import websockets
from auth_tests.fixtures import AuthAdmin, KeyUser, Tokens, login
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from apex_testkit import Level, Platform, RunningService, eventually

Frame = dict[str, Any]
DEFAULT_TIMEOUT = 10.0


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
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
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


Connect = Callable[..., Awaitable[WsClient]]


async def open_ws(
    base_url: str,
    token: str | None,
    *,
    last_seq: int | None = None,
    token_in_query: bool = False,
    compression: str | None = "deflate",
    max_size: int | None = 2**24,
) -> WsClient:
    """Connect to `base_url`/ws with `token`; HandshakeRefused if the gateway says no."""
    query: dict[str, str] = {}
    headers: dict[str, str] = {}
    if token is not None and token_in_query:
        query["access_token"] = token
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
            subprotocols=[websockets.Subprotocol("apex.v1")],
        )
    except InvalidStatus as exc:
        body = exc.response.body or b"{}"
        raise HandshakeRefused(exc.response.status_code, json.loads(body)) from None
    client = WsClient(ws, welcome={})
    client.welcome = await client.expect("welcome")
    return client


@pytest.fixture
async def gateway_url(clean_platform: Platform) -> AsyncIterator[str]:
    """Base URL (ws://...) of the gateway wired for the run's level."""
    async with clean_platform.serve("gateway") as url:
        yield url


@pytest.fixture
async def gateway_http(gateway_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the gateway's own endpoints (/healthz, /metrics, /instances)."""
    async with httpx.AsyncClient(
        base_url=gateway_url.replace("ws", "http", 1), timeout=30
    ) as client:
        yield client


@pytest.fixture
def ws_connect(gateway_url: str, ws_open: Connect) -> Connect:
    """`await ws_connect(token, last_seq=..., token_in_query=..., compression=...)`: a
    WsClient of the run's gateway (`ws_open` bound to `gateway_url`; `base_url=` picks
    another instance)."""

    async def connect(token: str | None, **options: Any) -> WsClient:
        return await ws_open(options.pop("base_url", gateway_url), token, **options)

    return connect


@dataclass(frozen=True)
class WsUser:
    """A platform user with a live session: what a browser tab holds."""

    key_user: KeyUser
    tokens: Tokens

    @property
    def user_id(self) -> str:
        return self.key_user.user_id

    @property
    def token(self) -> str:
        return self.tokens.access


@pytest.fixture
def make_ws_user(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin
) -> Callable[..., Awaitable[WsUser]]:
    """`await make_ws_user(tier="pro", ttl=None)`: a new user, signed in."""

    async def make(*, tier: str = "pro", ttl: int | None = None) -> WsUser:
        key_user = await auth_admin.key_user(tier=tier)
        return WsUser(key_user, await login(auth_client, key_user.api_key, ttl=ttl))

    return make


@pytest.fixture
async def ws_user(make_ws_user: Callable[..., Awaitable[WsUser]]) -> WsUser:
    """A pro-tier user, signed in."""
    return await make_ws_user()


# --- resilience (F2) ---
# Gateways a test owns (own settings, stop/kill at L3), connections to any of them, the
# gateway's HTTP endpoints, Prometheus parsing, forged tokens and connection "freezing"
# (a client that stops reading: a zombie for pings, a slow consumer for fan-out).


def http_url(ws_url: str) -> str:
    """http://host:port of a ws://host:port URL (the gateway's HTTP endpoints)."""
    return ws_url.replace("ws", "http", 1) if ws_url.startswith("ws") else ws_url


def ws_url(url: str) -> str:
    """ws://host:port of an http://host:port URL."""
    return url.replace("http", "ws", 1) if url.startswith("http") else url


@dataclass
class GatewayHandle:
    """One gateway a test started (`gateways.start`): its URL, graceful stop and, at L3,
    crash (the kit's `platform.start("gateway")` does the wiring)."""

    url: str
    settings: dict[str, str]
    service: RunningService

    @property
    def http(self) -> str:
        return http_url(self.url)

    async def stop(self) -> None:
        """Graceful: SIGTERM at L3 (drain, exit 0), the gateway's own shutdown at L2."""
        await self.service.stop()

    async def kill(self) -> None:
        """A crash (L3 only): SIGKILL, no goodbye."""
        await self.service.kill()

    async def get(self, path: str, timeout: float = 10.0) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.http, timeout=timeout) as client:
            return await client.get(path)

    async def healthz(self) -> httpx.Response:
        return await self.get("/healthz")

    async def metrics(self) -> str:
        response = await self.get("/metrics")
        assert response.status_code == 200, response.text
        return response.text

    async def instances(self) -> list[dict[str, Any]]:
        response = await self.get("/instances")
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()["instances"]
        return found


class Gateways:
    """`await gateways.start(APEX_WS_RATE="5/1", ...)`: a fresh gateway with these
    settings on this worker's servers (L2: in the test's event loop, L3: a process of its
    own, not shared with other tests, so it may be stopped or killed). All are stopped
    after the test. `auth_url` is the auth service they trust (override with APEX_AUTH_URL)."""

    def __init__(self, platform: Platform, stack: contextlib.AsyncExitStack) -> None:
        self.platform = platform
        self.stack = stack
        self.started: list[GatewayHandle] = []

    async def auth_url(self) -> str:
        """A base URL of the auth service, e.g. to put a fault proxy in front of it
        (`start(APEX_AUTH_URL=proxy.url_for(url))`)."""
        return await self.stack.enter_async_context(self.platform.serve("auth"))

    async def start(self, **settings: str) -> GatewayHandle:
        if self.platform.level is Level.L4:
            pytest.fail("gateways.start() exists at L2/L3 only: mark the test so", pytrace=False)
        running = await self.stack.enter_async_context(self.platform.start("gateway", **settings))
        handle = GatewayHandle(running.url, settings, running)
        self.started.append(handle)
        return handle


@pytest.fixture
async def gateways(clean_platform: Platform) -> AsyncIterator[Gateways]:
    """Factory of gateways with their own settings (L2/L3): see Gateways."""
    async with contextlib.AsyncExitStack() as stack:
        yield Gateways(clean_platform, stack)


@pytest.fixture
async def ws_open(
    serve_gateway: Callable[..., Awaitable[str]], gateways: Gateways
) -> AsyncIterator[Connect]:
    """`await ws_open(base_url, token, **open_ws options)`: a WsClient of any gateway.

    Every connection is closed after the test, before the gateways of `serve_gateway` and
    `gateways` stop (this fixture depends on them, so it is torn down first)."""
    opened: list[WsClient] = []

    async def connect(base_url: str, token: str | None, **options: Any) -> WsClient:
        client = await open_ws(base_url, token, **options)
        opened.append(client)
        return client

    yield connect
    # All at once and bounded: a connection a test froze (never reads) cannot finish a
    # closing handshake, and must not hold the teardown for its full timeout, one by one.
    await asyncio.gather(*(_close_quietly(client) for client in opened))


async def _close_quietly(client: WsClient, timeout: float = 2.0) -> None:
    with contextlib.suppress(ConnectionClosed, OSError, TimeoutError):
        await asyncio.wait_for(client.close(), timeout)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of sample `name{labels}` in Prometheus text (0.0 when absent)."""
    total = 0.0
    found = False
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if sample.strip() != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', label_text))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(value)
            found = True
    return total if found else 0.0


def has_metric(text: str, name: str) -> bool:
    return any(
        line.split("{")[0].split(" ")[0] == name
        for line in text.splitlines()
        if line and not line.startswith("#")
    )


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def forge(token: str, signing_key: str, **claims: Any) -> str:
    """`token` with some claims changed (None removes one), signed again with the
    platform's own key and kid: a well-signed token with bad claims (L2/L3)."""
    header = json.loads(_unb64(token.split(".")[0]))
    payload = json.loads(_unb64(token.split(".")[1]))
    for name, value in claims.items():
        if value is None:
            payload.pop(name, None)
        else:
            payload[name] = value
    return jwt.encode(payload, signing_key, algorithm="RS256", headers={"kid": header["kid"]})


def freeze(client: WsClient) -> None:
    """The client stops reading its socket: it answers no ping and drains no frame."""
    transport = client.ws.transport
    assert transport is not None
    transport.pause_reading()


def thaw(client: WsClient) -> None:
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


# --- delivery (F1) ---
# What the delivery modules share (DB sessions, broadcast, replay, multi-tab, ordering,
# delivery guarantee, uploads, compression): gateways of the worker with given settings,
# connections to them closed before the gateways stop, publishing with its ack, and an app
# that consumes a user's stream the way the contract asks a client to (track seq, resume
# with last_seq, dedup by seq).

# A gateway that lets a test publish hundreds of messages on one connection quickly.
FAST = {"APEX_WS_RATE": "100000/1", "APEX_WS_RATE_VIOLATIONS": "1000"}


@pytest.fixture
async def serve_gateway(
    clean_platform: Platform,
) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """`url = await serve_gateway(instance=0, **settings)`: instance N of the worker's
    gateway with these settings (L2: in the test's event loop; L3: the worker's process for
    these settings, shared with other tests: never stop or kill it, use `gateways` for
    that; L4: the target, no settings)."""
    async with contextlib.AsyncExitStack() as stack:

        async def serve(instance: int = 0, **settings: str) -> str:
            url = await stack.enter_async_context(
                clean_platform.serve("gateway", instance=instance, **settings)
            )
            await registered(url)
            return url

        yield serve


async def registered(url: str, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Wait until the gateway at `url` lists itself in /instances.

    An L3 gateway outlives tests, and each test starts with an empty Redis namespace
    (clean_platform): its registration is back at its next heartbeat. Until then other
    instances take it for dead (leadership, routing), as after a Redis flush in production.
    """
    async with httpx.AsyncClient(base_url=url.replace("ws", "http", 1), timeout=30) as http:
        me = (await http.get("/healthz")).json()["instance"]

        async def listed() -> bool:
            instances = (await http.get("/instances")).json()["instances"]
            return any(entry["id"] == me for entry in instances)

        await eventually(listed, timeout=timeout, message=f"gateway {me} registered")


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


def seqs_of(frames: list[Frame]) -> list[int]:
    return [int(frame["seq"]) for frame in frames]


def ids_of(frames: list[Frame]) -> list[str]:
    return [str(frame["id"]) for frame in frames]


@dataclass
class App:
    """A client application on top of the gateway: it remembers the last seq it processed,
    reconnects with `last_seq` after a drop and drops any seq it already has.

    `processed` is what the app saw (deduplicated), `raw` every message frame per
    connection (duplicates included), `reconnects` how often it had to reconnect."""

    dial: Callable[..., Awaitable[WsClient]]
    token: str
    url: str
    client: WsClient | None = None
    processed: list[Frame] = field(default_factory=list)
    raw: list[list[Frame]] = field(default_factory=list)
    reconnects: int = 0
    close_codes: list[int | None] = field(default_factory=list)

    @property
    def last_seq(self) -> int:
        return int(self.processed[-1]["seq"]) if self.processed else 0

    async def connect(self, url: str | None = None, *, last_seq: int | None = None) -> WsClient:
        """Connect (to `url`, else the current URL); after a first connection, always with
        the app's last_seq."""
        self.url = url or self.url
        if self.raw:
            last_seq = self.last_seq
        self.client = await self.dial(self.url, self.token, last_seq=last_seq)
        self.raw.append([])
        return self.client

    async def receive(
        self,
        count: int,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        on_message: Callable[[App], Awaitable[None]] | None = None,
        fallback_urls: list[str] | None = None,
    ) -> None:
        """Process messages until the app has `count`; whenever the connection drops,
        reconnect (to the next of `fallback_urls`, else the same URL) with last_seq."""
        while len(self.processed) < count:
            if self.client is None:
                await self.connect()
            assert self.client is not None
            try:
                frame = await self.client.expect("message", timeout=timeout)
            except ConnectionClosed as exc:
                self.close_codes.append(exc.rcvd.code if exc.rcvd else None)
                self.reconnects += 1
                await self._reconnect(fallback_urls.pop(0) if fallback_urls else None)
                continue
            self.raw[-1].append(frame)
            if int(frame["seq"]) > self.last_seq:
                self.processed.append(frame)
                if on_message is not None:
                    await on_message(self)

    async def _reconnect(self, url: str | None) -> None:

        async def reconnected() -> bool:
            try:
                await self.connect(url)
            except (OSError, ConnectionClosed, HandshakeRefused, TimeoutError):
                return False
            return True

        target = url or self.url
        await eventually(reconnected, timeout=DEFAULT_TIMEOUT, message=f"reconnect to {target}")


@pytest.fixture
async def notes_db(postgres_database: str) -> AsyncIterator[Any]:
    """asyncpg connection to the worker's database (the gateway's ws_notes tables; L2/L3)."""
    import asyncpg  # noqa: PLC0415 - only the DB modules need it

    conn = await asyncpg.connect(postgres_database)
    try:
        yield conn
    finally:
        await conn.close()
