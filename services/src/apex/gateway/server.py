"""The gateway: one instance's wiring and lifecycle, from ``serving()`` to the drain.

``Gateway.serving()`` connects to Redis, starts a websockets server (its
``process_request`` answers plain HTTP and checks handshakes,
:mod:`apex.gateway.handshake`; its handler serves each connection,
:mod:`apex.gateway.handler`) and the background tasks: the pub/sub follower
(:mod:`apex.gateway.pubsub`), the heartbeat and the session sweep
(:mod:`apex.gateway.heartbeat`). It is ready once pub/sub is subscribed. ``shutdown()``
drains: it refuses new connections, tells every client to reconnect elsewhere and
flushes their queues (up to APEX_WS_DRAIN_TIMEOUT); then, within APEX_WS_SHUTDOWN_GRACE
altogether, it closes them 1012, cancels and awaits every background task, deregisters
the instance and closes its clients. A step that does not finish in time is logged and
left behind: the shutdown never hangs on a dead dependency or a stuck task.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Coroutine
from typing import Any, Final

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from apex.gateway import handler, handshake, heartbeat, pubsub
from apex.gateway.auth_client import AuthClient
from apex.gateway.breaker import Breaker, BreakerState
from apex.gateway.connection import Connection, GatewayWebSocket
from apex.gateway.database import Database
from apex.gateway.directory import UserDirectory
from apex.gateway.fanout import MessageLog
from apex.gateway.feeds import UserFeed
from apex.gateway.metrics import Metrics
from apex.gateway.notes import NoteStore
from apex.gateway.registry import Registry
from apex.gateway.settings import GatewaySettings
from apex.gateway.uploads import HEADER_SIZE, Quotas, UploadStore

__all__ = ["Gateway", "RunningServer", "create_gateway"]

log = logging.getLogger(__name__)

SUBPROTOCOL: Final = Subprotocol(handshake.SUBPROTOCOL)
STARTUP_TIMEOUT_SECONDS: Final = 10.0
SHUTDOWN_CLOSE_SECONDS: Final = 3.0
# How long reset_memory waits for the handlers of the connections it aborted.
RESET_SECONDS: Final = 5.0
# A burst of handshakes queues for a Redis connection instead of opening hundreds at once
# (each connect then competes with the handshakes for the loop, and times out).
REDIS_POOL_SIZE: Final = 64


@dataclasses.dataclass(frozen=True)
class RunningServer:
    """A serving gateway: ``url`` is ``ws://host:port`` (WebSocket at ``/ws``)."""

    url: str
    instance: str
    server: Server


def create_gateway(settings: GatewaySettings) -> Gateway:
    """A gateway for ``settings``; nothing connects until ``serving()``."""
    return Gateway(settings)


class Gateway:
    """One gateway instance: its state, shared by the modules that act on it."""

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
        self.redis = _redis_client(settings.redis_url, decode=True)
        self._redis_bytes = _redis_client(settings.redis_url, decode=False)
        self.registry = Registry(
            self.redis, prefix=prefix, instance_id=settings.instance_id, ttl=settings.instance_ttl
        )
        self.log = MessageLog(
            self.redis, prefix=prefix, buffer=settings.replay_buffer, ttl=settings.stream_ttl
        )
        self.auth = AuthClient(
            auth_url=settings.auth_url,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            redis=self.redis,
            prefix=prefix,
            breaker=self.breakers["auth"],
        )
        self.uploads = UploadStore(
            self._redis_bytes,
            prefix=prefix,
            quotas=Quotas(
                max_size=settings.max_upload,
                count=settings.uploads_per_user,
                total_bytes=settings.upload_bytes_per_user,
                ttl=settings.upload_ttl,
            ),
        )
        self.database = Database(settings.database_url, self.breakers["postgres"])
        self.notes = NoteStore(self.database)
        self.directory = UserDirectory(self.database)
        # Set by pub/sub once subscribed: until then connections would miss live messages.
        self.subscribed = asyncio.Event()
        # Set whenever a connection's handler is done and none (nor any feed) is left.
        self.all_gone = asyncio.Event()
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._shutdown: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def serving(
        self, sock: Any = None, host: str = "127.0.0.1", port: int = 0
    ) -> AsyncIterator[RunningServer]:
        """Serve on ``sock`` (an already bound socket) or ``host:port`` until the block exits."""
        await self.redis.ping()
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
            self.spawn(pubsub.follow(self))
            self.spawn(heartbeat.beat(self))
            self.spawn(heartbeat.sweep(self))
            async with asyncio.timeout(STARTUP_TIMEOUT_SECONDS):
                await self.subscribed.wait()
            log.info("apex.gateway %s serving at %s", self.settings.instance_id, url)
            yield RunningServer(url=url, instance=self.settings.instance_id, server=server)
        finally:
            await self.shutdown()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a background task of this instance (cancelled by the drain)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

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
        # Everything after the flush shares one deadline.
        deadline = asyncio.get_running_loop().time() + self.settings.shutdown_grace
        if conns:
            closing = asyncio.gather(*(c.close(1012, "restart") for c in conns))
            await _within(closing, min(deadline, _after(SHUTDOWN_CLOSE_SECONDS)), "closing")
            for conn in conns:
                conn.ws.transport.abort()
        if self._server is not None:
            self._server.close(close_connections=False)
            waiting = self._server.wait_closed()
            await _within(waiting, min(deadline, _after(SHUTDOWN_CLOSE_SECONDS)), "the server")
        # Before deregistering: a heartbeat must not register the instance again.
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=max(0.0, deadline - _after(0)))
            for task in stuck:
                log.error("shutdown: background task %r ignored its cancel; left behind", task)
        await _within(self.registry.deregister(), deadline, "deregistering")
        for feed in self.feeds.values():
            feed.close()
        for name, closing_client in (
            ("the auth client", self.auth.aclose()),
            ("the database pool", self.database.aclose()),
            ("Redis", self.redis.aclose()),
            ("Redis (bytes)", self._redis_bytes.aclose()),
        ):
            await _within(closing_client, deadline, name)

    async def reset_memory(self) -> None:
        """Forget what this running instance holds in memory, as if it had just started:
        its connections (aborted, and waited until their handlers are done), their feeds,
        the breakers (closed), the counters, cached tenants and auth's keys; then register
        again at once. Its clients, pools, subscription and background tasks stay. For a
        harness that keeps one instance running between tests after emptying its Redis and
        PostgreSQL (apex_testkit at L2); a deployed instance never needs it.
        """
        if self._server is None or self.draining:
            raise RuntimeError("apex.gateway: reset_memory needs a serving, undrained gateway")
        if self.connections or self.feeds:
            self.all_gone.clear()
            for conn in list(self.connections.values()):
                conn.ws.transport.abort()
            async with asyncio.timeout(RESET_SECONDS):
                await self.all_gone.wait()
        for breaker in self.breakers.values():
            breaker.reset()
        self.metrics = Metrics()
        self.directory.forget()
        self.auth.forget_keys()
        await self.registry.heartbeat(0)

    # -- the HTTP side and the connections ----------------------------------------------

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        if not isinstance(ws, GatewayWebSocket):  # pragma: no cover - create_connection
            raise TypeError("the gateway serves GatewayWebSocket connections")
        return await handshake.process_request(self, ws, request)

    async def _handle(self, ws: ServerConnection) -> None:
        await handler.handle(self, ws)

    async def health(self) -> tuple[int, dict[str, Any]]:
        """``GET /healthz``: 200 when serving with Redis up, 503 when draining or Redis is down."""
        try:
            async with asyncio.timeout(1.0):
                await self.redis.ping()
            redis_check = "ok"
        except (RedisError, OSError, TimeoutError) as exc:
            redis_check = f"error: {type(exc).__name__}"
        auth_check = "ok" if self.breakers["auth"].state is BreakerState.CLOSED else "open"
        # Until pub/sub is subscribed, connections would miss live messages.
        healthy = redis_check == "ok" and not self.draining and self.subscribed.is_set()
        status = "ok" if healthy else ("draining" if self.draining else "error")
        body = {
            "status": status,
            "instance": self.settings.instance_id,
            "connections": len(self.connections),
            "checks": {"redis": redis_check, "auth": auth_check},
        }
        return (200 if healthy else 503), body

    def render_metrics(self) -> str:
        """``GET /metrics``: the Prometheus text of this instance."""
        states = {name: breaker.state for name, breaker in self.breakers.items()}
        return self.metrics.render(len(self.connections), states)


def _after(seconds: float) -> float:
    """The loop time ``seconds`` from now."""
    return asyncio.get_running_loop().time() + seconds


async def _within(work: Awaitable[Any], deadline: float, what: str) -> None:
    """Await ``work`` until the loop time ``deadline``; log (never raise) a failure."""
    try:
        async with asyncio.timeout_at(deadline):
            await work
    except TimeoutError:
        log.warning("shutdown: %s did not finish in time; left behind", what)
    except (RedisError, OSError) as exc:
        log.warning("shutdown: %s failed: %r", what, exc)


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


def _select_subprotocol(ws: ServerConnection, subprotocols: Any) -> Subprotocol | None:
    return SUBPROTOCOL if SUBPROTOCOL in subprotocols else None
