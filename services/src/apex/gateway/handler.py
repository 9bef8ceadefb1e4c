"""Connection handling: one WebSocket from its welcome to its cleanup, and its messages.

:func:`handle` is the websockets handler of a connection that passed the handshake
(:mod:`apex.gateway.handshake`, which also reserved its tab in Redis: its slot under the
per-user limit and its place in the leader election). It registers the connection
locally (its user's feed, the gateway's connections), sends the welcome through the
feed, and dispatches every message by ``type`` to :mod:`apex.gateway.messages` after
the size and rate checks (text and binary frames each have their own rate). A
handler's failure is an error reply to that message, never a closed socket. On the way
out the connection is unregistered everywhere and the other instances are told its
user's tabs changed (:func:`release_tab`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from apex.gateway import messages
from apex.gateway.auth_client import Principal
from apex.gateway.breaker import CircuitOpen
from apex.gateway.connection import Connection, GatewayWebSocket
from apex.gateway.database import DatabaseError
from apex.gateway.feeds import UserFeed
from apex.gateway.uploads import parse_chunk

if TYPE_CHECKING:
    from apex.gateway.server import Gateway

__all__ = ["handle", "release_tab"]

log = logging.getLogger(__name__)


async def handle(gw: Gateway, ws: ServerConnection) -> None:
    """Serve one connection until it closes."""
    if not isinstance(ws, GatewayWebSocket) or ws.principal is None:  # pragma: no cover
        raise TypeError("a connection must pass the handshake first")
    ws.take_over()

    def count_out(frames: int) -> None:
        gw.metrics.messages_out += frames

    def count_slow(conn: Connection) -> None:
        log.info("connection %s of user %s is a slow consumer: closing", conn.id, conn.user_id)
        gw.metrics.slow_consumers += 1

    conn = Connection(ws, ws.principal, gw.settings, on_sent=count_out, on_slow=count_slow)
    user_id = conn.user_id
    gw.connections[conn.id] = conn
    feed = gw.feeds.get(user_id)
    if feed is None:
        feed = gw.feeds[user_id] = UserFeed(user_id, gw.log)
    writer = asyncio.get_running_loop().create_task(conn.write_loop())
    expiry = asyncio.get_running_loop().create_task(_expire(conn))
    try:
        leaders = await gw.registry.leaders([user_id])
        conn.leader = leaders.get(user_id) == gw.registry.member(conn.id)
        welcome = {
            "type": "welcome",
            "connection_id": conn.id,
            "instance": gw.settings.instance_id,
            "user_id": user_id,
            "session_id": conn.session_id,
            "leader": conn.leader,
            "heartbeat": {
                "interval": gw.settings.ping_interval,
                "timeout": gw.settings.ping_timeout,
            },
        }
        feed.join(conn, welcome, ws.resume_from)
        async for message in ws:
            await _on_message(gw, conn, message)
    except ConnectionClosed:
        pass
    except (RedisError, OSError) as exc:
        log.warning("connection %s: Redis unavailable: %r", conn.id, exc)
        await conn.close(1011, "backing service unavailable")
    finally:
        if ws.reaped:
            gw.metrics.reaped += 1
        conn.closing = True
        writer.cancel()
        expiry.cancel()
        gw.connections.pop(conn.id, None)
        if feed.leave(conn):
            gw.feeds.pop(user_id, None)
        await release_tab(gw, conn.principal, conn.id)
        if not gw.connections and not gw.feeds:
            gw.all_gone.set()


async def release_tab(gw: Gateway, principal: Principal, connection_id: str) -> None:
    """Give the connection's tab back (its slot under the per-user limit) and tell the
    other instances the user's tabs changed (leadership may move)."""
    try:
        await gw.registry.remove_tab(principal.user_id, principal.tenant_id, connection_id)
        await gw.redis.publish(
            gw.registry.control_channel,
            json.dumps({"type": "tabs", "user_id": principal.user_id}),
        )
    except (RedisError, OSError):
        pass  # the instance's heartbeat prunes it if the instance dies meanwhile


async def _on_message(gw: Gateway, conn: Connection, message: str | bytes) -> None:
    gw.metrics.messages_in += 1
    conn.messages_seen += 1
    if isinstance(message, bytes):
        if len(message) > gw.frame_limit:
            conn.close_soon(1009, "message too big")
            return
        retry_after_ms = conn.binary_bucket.take()
        if retry_after_ms:
            chunk = parse_chunk(message)
            where = {"upload_id": chunk.upload_id, "offset": chunk.offset} if chunk else {}
            _rate_limited(gw, conn, retry_after_ms, None, **where)
            return
        await _guarded(conn, None, messages.handle_binary(gw, conn, message))
        return
    limit = gw.settings.max_message
    if len(message) > limit // 4 and len(message.encode()) > limit:
        conn.close_soon(1009, "message too big")
        return
    retry_after_ms = conn.bucket.take()
    if retry_after_ms:
        _rate_limited(gw, conn, retry_after_ms, _message_id(message))
        return
    try:
        parsed = json.loads(message)
    except ValueError:
        conn.error("malformed", detail="not valid JSON")
        return
    if not isinstance(parsed, dict):
        conn.error("malformed", detail="a message is a JSON object")
        return
    message_id, kind = parsed.get("id"), parsed.get("type")
    handler = messages.HANDLERS.get(kind) if isinstance(kind, str) else None
    if handler is None:
        conn.error("unknown_type", message_id, detail=f"unknown type {kind!r}"[:200])
        return
    await _guarded(conn, message_id, handler(gw, conn, parsed))


def _rate_limited(
    gw: Gateway, conn: Connection, retry_after_ms: int, message_id: Any, **extra: Any
) -> None:
    """Drop a message over its rate: say when to retry; close 4008 after too many."""
    gw.metrics.rate_limited += 1
    conn.violations += 1
    conn.error("rate_limited", message_id, retry_after_ms=retry_after_ms, **extra)
    if conn.violations >= gw.settings.rate_violations:
        conn.close_soon(4008, "rate limited")


async def _guarded(conn: Connection, message_id: Any, work: Any) -> None:
    """Run one message's handler; its failure is an error reply, never a closed socket."""
    try:
        await work
    except CircuitOpen as exc:
        conn.error("unavailable", message_id, detail=str(exc))
    except DatabaseError as exc:
        conn.error("unavailable", message_id, detail=str(exc))
    except (RedisError, OSError, TimeoutError) as exc:
        conn.error("unavailable", message_id, detail=f"backing service: {type(exc).__name__}")
    except ConnectionClosed:
        raise
    except Exception:
        log.exception("handler failed on connection %s", conn.id)
        conn.error("internal", message_id)


async def _expire(conn: Connection) -> None:
    """Close 4001 when the connection's token expires (a refresh moves the deadline)."""
    while True:
        delay = conn.principal.expires_at - time.time()
        if delay <= 0:
            conn.close_soon(4001, "token expired")
            return
        await asyncio.sleep(min(delay, 3600.0))


def _message_id(text: str) -> Any:
    """The ``id`` of a dropped message, so its error reply can echo it."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    return parsed.get("id") if isinstance(parsed, dict) else None
