"""One client connection: its identity, bounded send queue, writer task and rate limits.

Nothing that sends to a connection ever waits for it. A frame is written to the socket
at once while the socket keeps up (nothing queued, websockets' write buffer under its
limit); otherwise it goes into a bounded queue that one writer task drains into the
socket as the client reads, every frame waiting at the time (up to WRITE_BATCH_CHARS)
in one write. A client that does not read fills the queue and is closed 4009 "slow
consumer"; its messages stay in its user's stream for a resume, and no other
connection is slowed down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Final

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from apex.gateway.auth_client import Principal
from apex.gateway.ratelimit import TokenBucket
from apex.gateway.settings import GatewaySettings

__all__ = ["CLOSE_TIMEOUT_SECONDS", "Connection", "GatewayWebSocket"]

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_SECONDS: Final = 10.0
# What the writer takes from the queue for one socket write, in characters (about
# bytes): a backlog goes out in few system calls, and a write overshoots websockets'
# write buffer limit (32 KiB) by at most about this much.
WRITE_BATCH_CHARS: Final = 32_768


class GatewayWebSocket(ServerConnection):
    """websockets' server connection, carrying what the handshake verified and reserved.

    The handshake reserves the connection's tab (its slot under the per-user limit)
    before websockets completes the upgrade. If the connection ends before a handler
    takes it over (the upgrade failed, the client left), ``on_abandoned`` gives the
    slot back.
    """

    principal: Principal | None = None
    connection_id: str = ""
    resume_from: int | None = None
    reaped = False
    on_abandoned: Callable[[], None] | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        release, self.on_abandoned = self.on_abandoned, None
        if release is not None:
            release()

    def write_now(self, frame: str | bytes) -> bool:
        """Write ``frame`` to the socket now if that needs no wait (the connection is open
        and its write buffer under the limit); False (nothing written) otherwise."""
        if self.protocol.state is not State.OPEN or self.paused or self.transport.is_closing():
            return False
        if isinstance(frame, str):
            self.protocol.send_text(frame.encode())
        else:
            self.protocol.send_binary(frame)
        self.send_data()
        return True

    async def send_many(self, frames: list[str | bytes]) -> None:
        """Send each of ``frames`` as a message of its own (text for a str, binary for
        bytes), all written to the socket at once: one system call, not one per frame."""
        async with self.send_context():
            for frame in frames:
                if isinstance(frame, str):
                    self.protocol.send_text(frame.encode())
                else:
                    self.protocol.send_binary(frame)

    def send_data(self) -> None:
        # websockets writes each frame's bytes on its own (a system call each when the
        # socket keeps up): join what is pending, the end-of-stream marker (b"") aside.
        writes = self.protocol.writes
        if len(writes) > 1 and all(writes):
            self.protocol.writes = [b"".join(writes)]
        super().send_data()

    def take_over(self) -> None:
        """The handler owns this connection (and its cleanup) from now on."""
        self.on_abandoned = None

    async def keepalive(self) -> None:
        """Ping every ping_interval; a peer silent for ping_timeout is reaped at once.

        websockets' own keepalive starts a closing handshake with the dead peer and
        waits close_timeout for it; a zombie never answers, so we drop the TCP
        connection instead and the handler cleans up right away.
        """
        if self.ping_interval is None:  # pragma: no cover - only started when set
            return
        latency = 0.0
        try:
            while True:
                await asyncio.sleep(max(0.0, self.ping_interval - latency))
                try:
                    async with asyncio.timeout(self.ping_timeout):
                        pong_received = await self.ping()
                        latency = await pong_received
                except TimeoutError:
                    self.reaped = True
                    log.info("connection from %s missed its pong: reaped", self.remote_address)
                    self.transport.abort()
                    return
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("keepalive failed")


class Connection:
    """A live, authenticated WebSocket connection of one user."""

    def __init__(
        self,
        ws: GatewayWebSocket,
        principal: Principal,
        settings: GatewaySettings,
        *,
        on_sent: Callable[[int], None],
        on_slow: Callable[[Connection], None],
    ) -> None:
        self.id = ws.connection_id or uuid.uuid4().hex
        self.ws = ws
        self.principal = principal
        self.connected_at = time.time()
        self.last_seq: int | None = None  # None until the welcome went out
        self.welcome_seq = 0
        self.leader = False
        self.messages_seen = 0
        self.violations = 0
        self.bucket = TokenBucket(settings.rate.count, settings.rate.window)
        self.binary_bucket = TokenBucket(settings.binary_rate.count, settings.binary_rate.window)
        # The user's permissions as auth last said (when, what): broadcast checks read
        # them; a permissions.changed event replaces them.
        self.permissions: tuple[float, frozenset[str]] | None = None
        self.closing = False
        self._queue: asyncio.Queue[str | bytes] = asyncio.Queue(maxsize=settings.send_queue)
        self._pace_timeout = settings.ping_timeout
        self._on_sent = on_sent
        self._on_slow = on_slow
        self._close_task: asyncio.Task[None] | None = None

    @property
    def user_id(self) -> str:
        return self.principal.user_id

    @property
    def session_id(self) -> str:
        return self.principal.session_id

    def send(self, message: dict[str, Any] | str) -> bool:
        """Send or queue a frame without waiting; False if the connection is closing or
        just overflowed."""
        if self.closing:
            return False
        frame = message if isinstance(message, str) else json.dumps(message, separators=(",", ":"))
        # Straight to the socket while it keeps up: no task switch per frame. Only with
        # nothing queued, or this frame would overtake those.
        if self._queue.empty() and self.ws.write_now(frame):
            self._on_sent(1)
            return True
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self._on_slow(self)
            self.close_soon(4009, "slow consumer")
            return False
        return True

    async def send_paced(self, frame: str) -> bool:
        """Queue a frame, waiting for room (replays: paced by the socket, not dumped into
        the queue); a client that makes no room within ping_timeout is a slow consumer."""
        if self.closing:
            return False
        try:
            async with asyncio.timeout(self._pace_timeout):
                await self._queue.put(frame)
        except TimeoutError:
            self._on_slow(self)
            self.close_soon(4009, "slow consumer")
            return False
        return True

    def error(self, code: str, message_id: Any = None, **extra: Any) -> None:
        """Queue ``{"type":"error","code",...}`` (echoing the client's message id if any)."""
        reply: dict[str, Any] = {"type": "error", "code": code}
        if message_id is not None:
            reply["id"] = message_id
        reply.update(extra)
        self.send(reply)

    async def write_loop(self) -> None:
        """Drain the send queue into the socket until the connection closes."""
        queue = self._queue
        try:
            while True:
                frames = [await queue.get()]
                size = len(frames[0])
                while size < WRITE_BATCH_CHARS and not queue.empty():
                    frames.append(queue.get_nowait())
                    size += len(frames[-1])
                try:
                    await self.ws.send_many(frames)
                finally:
                    for _ in frames:
                        queue.task_done()
                self._on_sent(len(frames))
        except ConnectionClosed:
            pass

    async def flush(self, timeout: float) -> bool:
        """Wait until every queued frame is written (True) or ``timeout`` passes (False)."""
        try:
            async with asyncio.timeout(timeout):
                await self._queue.join()
        except TimeoutError:
            return False
        return True

    def close_soon(self, code: int, reason: str) -> None:
        """Start closing with ``code`` unless a close is already under way."""
        if self.closing:
            return
        self.closing = True
        self._close_task = asyncio.get_running_loop().create_task(self.close(code, reason))

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code``; give up on the closing handshake after a timeout."""
        self.closing = True
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await self.ws.close(code, reason)
        except TimeoutError:
            # A client that does not read never acknowledges the close frame.
            with contextlib.suppress(Exception):
                self.ws.transport.abort()
        except Exception:
            log.debug("closing connection %s failed", self.id, exc_info=True)
