"""The gateway: lifecycle, the connection handler, pub/sub, heartbeats and the drain.

``Gateway.serving()`` starts the background work (registry heartbeat, pub/sub
subscriber) and a websockets server whose ``process_request`` answers plain HTTP and
checks handshakes (:mod:`apex.gateway.handshake`). Each connection is registered
locally (feeds, connections) and in Redis (tabs, for limits and leader election).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Final

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from apex.gateway import handshake, messages
from apex.gateway.auth_client import AuthClient
from apex.gateway.breaker import Breaker, BreakerState, CircuitOpen
from apex.gateway.connection import Connection, GatewayWebSocket
from apex.gateway.fanout import MessageLog
from apex.gateway.feeds import UserFeed
from apex.gateway.metrics import Metrics
from apex.gateway.notes import NoteStore
from apex.gateway.registry import Registry
from apex.gateway.settings import GatewaySettings
from apex.gateway.uploads import HEADER_SIZE, UploadStore

__all__ = ["Gateway", "RunningServer", "create_gateway"]

log = logging.getLogger(__name__)

SUBPROTOCOL: Final = Subprotocol("apex.v1")
STARTUP_TIMEOUT_SECONDS: Final = 10.0
SHUTDOWN_CLOSE_SECONDS: Final = 3.0
RESUBSCRIBE_DELAY_SECONDS: Final = 0.5


@dataclasses.dataclass(frozen=True)
class RunningServer:
    """A serving gateway: ``url`` is ``ws://host:port`` (WebSocket at ``/ws``)."""

    url: str
    instance: str
    server: Server


# A burst of handshakes queues for a Redis connection instead of opening hundreds at once
# (each connect then competes with the handshakes for the loop, and times out).
REDIS_POOL_SIZE = 64


def _redis_client(url: str, *, decode: bool) -> Redis:
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_POOL_SIZE,
        timeout=10,
        decode_responses=decode,
        socket_connect_timeout=5,
        socket_timeout=10,
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 2),
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


def create_gateway(settings: GatewaySettings) -> Gateway:
    """A gateway for ``settings``; nothing connects until ``serving()``."""
    return Gateway(settings)


class Gateway:
    """One gateway instance."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        threshold, open_seconds = settings.breaker.count, settings.breaker.window
        self.breakers = {
            name: Breaker(name, threshold=threshold, open_seconds=open_seconds)
            for name in ("auth", "postgres")
        }
        self.connections: dict[str, Connection] = {}
        self.feeds: dict[str, UserFeed] = {}
        self.draining = False
        self.chunk_size = min(65_536, settings.max_message)
        self.frame_limit = settings.max_message + HEADER_SIZE  # binary: chunk + header
        prefix = settings.redis_prefix
        self.auth_channel = f"{prefix}auth:events"
        self._redis = _redis_client(settings.redis_url, decode=True)
        self._redis_bytes = _redis_client(settings.redis_url, decode=False)
        self.registry = Registry(
            self._redis, prefix=prefix, instance_id=settings.instance_id, ttl=settings.instance_ttl
        )
        self.log = MessageLog(self._redis, prefix=prefix, buffer=settings.replay_buffer)
        self.auth = AuthClient(
            auth_url=settings.auth_url,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            redis=self._redis,
            prefix=prefix,
            breaker=self.breakers["auth"],
        )
        self.uploads = UploadStore(self._redis_bytes, prefix=prefix, max_size=settings.max_upload)
        self.notes = NoteStore(settings.database_url, self.breakers["postgres"])
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._subscribed = asyncio.Event()
        self._shutdown: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def serving(
        self, sock: Any = None, host: str = "127.0.0.1", port: int = 0
    ) -> AsyncIterator[RunningServer]:
        """Serve on ``sock`` (an already bound socket) or ``host:port`` until the block exits."""
        await self._redis.ping()
        server = await serve(
            self._handle,
            host=None if sock is not None else host,
            port=None if sock is not None else port,
            sock=sock,
            process_request=self._process_request,
            create_connection=GatewayWebSocket,
            select_subprotocol=_select_subprotocol,
            compression="deflate" if self.settings.compression else None,
            ping_interval=self.settings.ping_interval,
            ping_timeout=self.settings.ping_timeout,
            # websockets checks the raw (possibly deflated) frame too, and incompressible
            # data grows when deflated: leave slack here, the handler enforces the limits
            # (text: APEX_WS_MAX_MESSAGE; binary: that plus the 24-byte chunk header).
            max_size=self.frame_limit + self.frame_limit // 32 + 1024,
            server_header=None,
        )
        self._server = server
        bound_host, bound_port = server.sockets[0].getsockname()[:2]
        url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        url = f"ws://{url_host}:{bound_port}"
        self.registry.url = url
        try:
            await self.registry.heartbeat(0)
            self._spawn(self._subscribe_loop())
            self._spawn(self._heartbeat_loop())
            async with asyncio.timeout(STARTUP_TIMEOUT_SECONDS):
                await self._subscribed.wait()
            log.info("apex.gateway %s serving at %s", self.settings.instance_id, url)
            yield RunningServer(url=url, instance=self.settings.instance_id, server=server)
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Drain: refuse new connections, tell clients, flush, close 1012, deregister."""
        if self._shutdown is None:
            self._shutdown = asyncio.get_running_loop().create_task(self._drain())
        await asyncio.shield(self._shutdown)

    async def _drain(self) -> None:
        self.draining = True
        conns = list(self.connections.values())
        log.info("apex.gateway draining %d connections", len(conns))
        for conn in conns:
            conn.send({"type": "shutdown", "reconnect": True})
        if conns:
            await asyncio.gather(*(c.flush(self.settings.drain_timeout) for c in conns))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SHUTDOWN_CLOSE_SECONDS):
                    await asyncio.gather(*(c.close(1012, "restart") for c in conns))
            for conn in conns:
                conn.ws.transport.abort()
        if self._server is not None:
            self._server.close(close_connections=False)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SHUTDOWN_CLOSE_SECONDS):
                    await self._server.wait_closed()
        with contextlib.suppress(RedisError, OSError):
            await self.registry.deregister()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for feed in self.feeds.values():
            feed.close()
        await self.auth.aclose()
        await self.notes.aclose()
        await self._redis.aclose()
        await self._redis_bytes.aclose()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- HTTP --------------------------------------------------------------------------

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        if not isinstance(ws, GatewayWebSocket):  # pragma: no cover - create_connection
            raise TypeError("the gateway serves GatewayWebSocket connections")
        return await handshake.process_request(self, ws, request)

    async def health(self) -> tuple[int, dict[str, Any]]:
        """``GET /healthz``: 200 when serving with Redis up, 503 when draining or Redis is down."""
        try:
            async with asyncio.timeout(1.0):
                await self._redis.ping()
            redis_check = "ok"
        except (RedisError, OSError, TimeoutError) as exc:
            redis_check = f"error: {type(exc).__name__}"
        auth_check = "ok" if self.breakers["auth"].state is BreakerState.CLOSED else "open"
        # Until pub/sub is subscribed, connections would miss live messages.
        healthy = redis_check == "ok" and not self.draining and self._subscribed.is_set()
        status = "ok" if healthy else ("draining" if self.draining else "error")
        body = {
            "status": status,
            "instance": self.settings.instance_id,
            "connections": len(self.connections),
            "checks": {"redis": redis_check, "auth": auth_check},
        }
        return (200 if healthy else 503), body

    def render_metrics(self) -> str:
        states = {name: breaker.state for name, breaker in self.breakers.items()}
        return self.metrics.render(len(self.connections), states)

    # -- connections -------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        if not isinstance(ws, GatewayWebSocket) or ws.principal is None:  # pragma: no cover
            raise TypeError("a connection must pass the handshake first")
        conn = Connection(
            ws, ws.principal, self.settings, on_sent=self._count_out, on_slow=self._count_slow
        )
        user_id = conn.user_id
        self.connections[conn.id] = conn
        feed = self.feeds.get(user_id)
        if feed is None:
            feed = self.feeds[user_id] = UserFeed(user_id, self.log)
        writer = asyncio.get_running_loop().create_task(conn.write_loop())
        expiry = asyncio.get_running_loop().create_task(self._expire(conn))
        try:
            await self.registry.add_tab(user_id, conn.id)
            leaders = await self.registry.leaders([user_id])
            conn.leader = leaders.get(user_id) == self.registry.member(conn.id)
            welcome = {
                "type": "welcome",
                "connection_id": conn.id,
                "instance": self.settings.instance_id,
                "user_id": user_id,
                "session_id": conn.session_id,
                "leader": conn.leader,
                "heartbeat": {
                    "interval": self.settings.ping_interval,
                    "timeout": self.settings.ping_timeout,
                },
            }
            feed.join(conn, welcome, ws.resume_from)
            async for message in ws:
                await self._on_message(conn, message)
        except ConnectionClosed:
            pass
        except (RedisError, OSError) as exc:
            log.warning("connection %s: Redis unavailable: %r", conn.id, exc)
            await conn.close(1011, "backing service unavailable")
        finally:
            if ws.reaped:
                self.metrics.reaped += 1
            conn.closing = True
            writer.cancel()
            expiry.cancel()
            self.connections.pop(conn.id, None)
            if feed.leave(conn):
                self.feeds.pop(user_id, None)
            try:
                await self.registry.remove_tab(user_id, conn.id)
                await self._redis.publish(
                    self.registry.control_channel,
                    json.dumps({"type": "tabs", "user_id": user_id}),
                )
            except (RedisError, OSError):
                pass

    def _count_out(self) -> None:
        self.metrics.messages_out += 1

    def _count_slow(self, conn: Connection) -> None:
        log.info("connection %s of user %s is a slow consumer: closing", conn.id, conn.user_id)
        self.metrics.slow_consumers += 1

    async def _on_message(self, conn: Connection, message: str | bytes) -> None:
        self.metrics.messages_in += 1
        conn.messages_seen += 1
        if isinstance(message, bytes):
            if len(message) > self.frame_limit:
                conn.close_soon(1009, "message too big")
                return
            await self._guarded(conn, None, messages.handle_binary(self, conn, message))
            return
        limit = self.settings.max_message
        if len(message) > limit // 4 and len(message.encode()) > limit:
            conn.close_soon(1009, "message too big")
            return
        retry_after_ms = conn.bucket.take()
        if retry_after_ms:
            self.metrics.rate_limited += 1
            conn.violations += 1
            conn.error("rate_limited", _message_id(message), retry_after_ms=retry_after_ms)
            if conn.violations >= self.settings.rate_violations:
                conn.close_soon(4008, "rate limited")
            return
        try:
            parsed = json.loads(message)
        except ValueError:
            conn.error("malformed", detail="not valid JSON")
            return
        if not isinstance(parsed, dict):
            conn.error("malformed", detail="a message is a JSON object")
            return
        message_id = parsed.get("id")
        handler = messages.HANDLERS.get(parsed.get("type"))  # type: ignore[arg-type]
        if handler is None:
            conn.error("unknown_type", message_id, detail=f"unknown type {parsed.get('type')!r}")
            return
        await self._guarded(conn, message_id, handler(self, conn, parsed))

    async def _guarded(self, conn: Connection, message_id: Any, work: Any) -> None:
        """Run one message's handler; its failure is an error reply, never a closed socket."""
        try:
            await work
        except CircuitOpen as exc:
            conn.error("unavailable", message_id, detail=str(exc))
        except (RedisError, OSError, TimeoutError) as exc:
            conn.error("unavailable", message_id, detail=f"backing service: {type(exc).__name__}")
        except ConnectionClosed:
            raise
        except Exception:
            log.exception("handler failed on connection %s", conn.id)
            conn.error("internal", message_id)

    async def _expire(self, conn: Connection) -> None:
        """Close 4001 when the connection's token expires (a refresh moves the deadline)."""
        while True:
            delay = conn.principal.expires_at - time.time()
            if delay <= 0:
                conn.close_soon(4001, "token expired")
                return
            await asyncio.sleep(min(delay, 3600.0))

    # -- pub/sub -----------------------------------------------------------------------

    async def _subscribe_loop(self) -> None:
        """Follow the fan-out, control and auth channels; after an outage resubscribe and
        catch every feed up from the streams."""
        outage = False
        while True:
            client = Redis.from_url(
                self.settings.redis_url,
                decode_responses=True,
                socket_connect_timeout=2,
                health_check_interval=2,
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(
                    self.log.channel, self.registry.control_channel, self.auth_channel
                )
                if outage:
                    log.info("pub/sub resubscribed after a Redis outage: resyncing")
                    self._resync()
                    outage = False
                self._subscribed.set()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._on_pubsub(str(message["channel"]), str(message["data"]))
            except (RedisError, OSError) as exc:
                if not outage:
                    log.warning("pub/sub connection lost: %r; resubscribing", exc)
                outage = True
                await asyncio.sleep(RESUBSCRIBE_DELAY_SECONDS)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
                with contextlib.suppress(Exception):
                    await client.aclose()

    def _resync(self) -> None:
        for feed in self.feeds.values():
            feed.resync()
        self._spawn(self._check_sessions_quietly())

    def _on_pubsub(self, channel: str, data: str) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if channel == self.log.channel:
            feed = self.feeds.get(str(event.get("u")))
            if feed is not None:
                feed.announce(int(event["s"]), str(event["m"]))
        elif channel == self.registry.control_channel:
            if event.get("type") == "tabs" and event.get("user_id") in self.feeds:
                self._spawn(self._update_leaders([str(event["user_id"])]))
        elif channel == self.auth_channel:
            self._on_auth_event(event)

    def _on_auth_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "session.revoked":
            session_id = event.get("session_id")
            for conn in list(self.connections.values()):
                if conn.session_id == session_id:
                    conn.close_soon(4003, "session revoked")
        elif kind == "permissions.changed":
            user_ids = event.get("user_ids") or []
            if isinstance(user_ids, list):
                for user_id in user_ids:
                    feed = self.feeds.get(str(user_id))
                    for conn in list(feed.connections.values()) if feed else []:
                        self._spawn(messages.push_permissions(self, conn))

    # -- periodic work -----------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = max(0.2, self.settings.instance_ttl / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.registry.heartbeat(len(self.connections))
                await self._update_leaders(list(self.feeds))
                await self._check_sessions()
            except (RedisError, OSError) as exc:
                log.warning("heartbeat failed: %r", exc)
            except Exception:
                log.exception("heartbeat failed")

    async def _update_leaders(self, user_ids: list[str]) -> None:
        """Tell each user's oldest live tab, if it is here and did not know, that it leads."""
        leaders = await self.registry.leaders(user_ids)
        for user_id, leader in leaders.items():
            feed = self.feeds.get(user_id)
            for conn in list(feed.connections.values()) if feed else []:
                is_leader = leader == self.registry.member(conn.id)
                if is_leader and not conn.leader and conn.last_seq is not None:
                    conn.send({"type": "leader"})
                conn.leader = is_leader

    async def _check_sessions_quietly(self) -> None:
        try:
            await self._check_sessions()
        except (RedisError, OSError) as exc:
            log.warning("session check failed: %r", exc)  # the next heartbeat retries

    async def _check_sessions(self) -> None:
        """Close connections whose session is gone (a revocation event may have been missed)."""
        conns = list(self.connections.values())
        if not conns:
            return
        session_ids = sorted({conn.session_id for conn in conns})
        async with self._redis.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                pipe.exists(f"{self.settings.redis_prefix}sess:{session_id}")
            alive = dict(zip(session_ids, await pipe.execute(), strict=True))
        for conn in conns:
            if not alive.get(conn.session_id):
                conn.close_soon(4003, "session revoked")


def _message_id(text: str) -> Any:
    """The ``id`` of a dropped message, so its error reply can echo it."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    return parsed.get("id") if isinstance(parsed, dict) else None


def _select_subprotocol(ws: ServerConnection, subprotocols: Any) -> Subprotocol | None:
    return SUBPROTOCOL if SUBPROTOCOL in subprotocols else None
