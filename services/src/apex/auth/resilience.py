"""Surviving a Redis outage: health probe, revocation cache, event subscription.

Each instance keeps in memory the ids of revoked sessions: from ``session.revoked``
events on the ``<prefix>auth:events`` channel, and from a full read of the sorted set
``<prefix>revoked_sids`` (member = session id, score = when the last access token of
that session expires) after every successful probe, i.e. every
APEX_REDIS_PROBE_INTERVAL while Redis answers. While Redis is unreachable
(``mode == "degraded"``), access tokens can still be verified statelessly (signature,
expiry and this cache) as long as the last sync is younger than
APEX_FAILOVER_MAX_STALENESS. The probe notices Redis coming back, resynchronises and
restarts the subscription, so the service recovers without a restart.

No background task ever ends on an error: each logs, waits one probe interval and
tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from apex.common.tasks import stop_tasks, wait_event

__all__ = ["REDIS_DOWN", "REVOKED_SIDS", "Mode", "Resilience"]

log = logging.getLogger(__name__)

REVOKED_SIDS: Final = "revoked_sids"
# What a Redis call raises when the server is gone. RuntimeError: under uvloop, writing
# to a connection the peer has closed raises "the handler is closed", which redis-py
# lets through unconverted.
REDIS_DOWN: Final[tuple[type[Exception], ...]] = (RedisError, OSError, RuntimeError)
PROBE_TIMEOUT: Final = 2.0
# How long stop() waits for the background tasks to end.
_STOP_TIMEOUT: Final = 5.0
# A refused or dropped connection degrades at once; timeouts only when repeated, so a
# slow moment under load does not switch an instance to stateless checks.
TIMEOUTS_TO_DEGRADE: Final = 2
Mode = Literal["normal", "degraded"]
EventHandler = Callable[[dict[str, Any]], None]
Hook = Callable[[], Awaitable[None]]


class Resilience:
    """Redis health and the in-memory revocation cache of one service instance."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str,
        probe_interval: float,
        max_staleness: float,
        revocation_ttl: float,
    ) -> None:
        self._redis = redis
        self.channel = f"{prefix}auth:events"
        self.revoked_key = f"{prefix}{REVOKED_SIDS}"
        self.probe_interval = probe_interval
        self.max_staleness = max_staleness
        self.revocation_ttl = revocation_ttl
        # A blackholed Redis must not stall the probe for the client's socket timeout;
        # a busy event loop must not pass for an outage (see mark_down).
        self.probe_timeout = PROBE_TIMEOUT
        self._timeouts = 0  # consecutive timeouts
        self.mode: Mode = "normal"
        self.last_error = ""
        self.last_sync = 0.0  # time.monotonic() of the last full read of revoked_sids
        self.subscribed = False
        self._revoked: dict[str, float] = {}  # session id -> expiry (epoch seconds)
        self._handlers: dict[str, list[EventHandler]] = {}
        self._on_subscribed: list[Callable[[], None]] = []
        self._on_unsubscribed: list[Callable[[], None]] = []
        self._on_recovered: list[Hook] = []
        self._transition = asyncio.Lock()
        self._probe_task: asyncio.Task[None] | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._first_subscription = asyncio.Event()

    # -- wiring -----------------------------------------------------------------

    def on_event(self, event_type: str, handler: EventHandler) -> None:
        """Call ``handler(message)`` for every event of ``event_type`` on the channel."""
        self._handlers.setdefault(event_type, []).append(handler)

    def on_subscription(
        self, subscribed: Callable[[], None], unsubscribed: Callable[[], None]
    ) -> None:
        """Be told when this instance starts or stops receiving events (may have missed some)."""
        self._on_subscribed.append(subscribed)
        self._on_unsubscribed.append(unsubscribed)

    def on_recovery(self, hook: Hook) -> None:
        """Run ``hook`` when Redis answers again after an outage."""
        self._on_recovered.append(hook)

    async def start(self) -> None:
        """First sync (Redis must answer), then the probe and subscription tasks."""
        await self._sync()
        self._probe_task = asyncio.create_task(self._probe_loop(), name="apex-redis-probe")
        self._start_listener()
        # Wait (briefly) for the subscription: events published right after startup
        # must reach this instance.
        await wait_event(self._first_subscription, 5)

    async def stop(self) -> None:
        """Stop the background tasks."""
        self._stopping = True
        # Cancelled again until they end: a cancel can be lost (apex.common.tasks), and
        # the listener would go on listening.
        still = await stop_tasks((self._probe_task, self._listen_task), _STOP_TIMEOUT)
        for running in still:
            log.warning("%s did not stop within %.1f s", running.get_name(), _STOP_TIMEOUT)
        for ended in (self._probe_task, self._listen_task):
            if ended is not None and ended.done() and not ended.cancelled():
                ended.exception()  # retrieved: an error of a task being stopped is not news

    async def reset(self) -> None:
        """Forget the revocation cache and the outage state, then probe: afterwards this
        instance knows what a freshly started one would (``apex.auth.reset_memory``)."""
        self._revoked = {}
        self._timeouts = 0
        self.last_error = ""
        await self.probe()

    # -- state ------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        """Whether Redis is considered unreachable."""
        return self.mode == "degraded"

    def staleness(self) -> float:
        """Seconds since the revocation cache was last synchronised with Redis."""
        return time.monotonic() - self.last_sync

    def fresh(self) -> bool:
        """Whether the revocation cache may still be trusted for stateless verification."""
        return self.staleness() <= self.max_staleness

    def retry_after(self) -> int:
        """Seconds a client should wait before retrying a request refused while degraded."""
        return max(1, math.ceil(self.probe_interval))

    def is_revoked(self, session_id: str) -> bool:
        """Whether ``session_id`` is known to be revoked."""
        expiry = self._revoked.get(session_id)
        return expiry is not None and expiry > time.time()

    def mark_down(self, exc: BaseException) -> None:
        """Redis failed: degrade now rather than at the next probe (timeouts: when repeated)."""
        if is_timeout(exc):
            self._timeouts += 1
            if self._timeouts < TIMEOUTS_TO_DEGRADE:
                log.info("Redis timed out (%d in a row)", self._timeouts)
                return
        if self.mode != "degraded":
            log.warning("Redis unreachable (%s): degraded mode", type(exc).__name__)
        self.mode = "degraded"
        self.last_error = type(exc).__name__

    async def record_revocation(self, session_id: str, *, ttl: float | None = None) -> None:
        """Remember locally and in ``revoked_sids`` that ``session_id`` has been revoked."""
        now = time.time()
        expiry = now + (ttl if ttl is not None else self.revocation_ttl)
        self._revoked[session_id] = max(expiry, self._revoked.get(session_id, 0.0))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self.revoked_key, {session_id: expiry}, gt=True)
            pipe.zremrangebyscore(self.revoked_key, "-inf", now)
            pipe.expire(self.revoked_key, math.ceil(self.revocation_ttl) + 60)
            await pipe.execute()

    # -- probing ----------------------------------------------------------------

    async def probe(self) -> str:
        """Ping Redis and, if it answers, resynchronise; ``"ok"`` or ``"error: <type>"``."""
        try:
            await asyncio.wait_for(self._sync(), self.probe_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure means Redis is unusable
            self.mark_down(exc)
            if self.degraded:
                # Pooled connections may be half-dead (dropped by the peer): start afresh.
                with contextlib.suppress(Exception):
                    await self._redis.connection_pool.disconnect()
            return f"error: {type(exc).__name__}"
        self._timeouts = 0
        if self.mode == "degraded":
            await self._recovered()
        return "ok"

    async def _sync(self) -> None:
        now = time.time()
        entries: list[Any] = await self._redis.zrangebyscore(
            self.revoked_key, now, "+inf", withscores=True
        )
        revoked = {_text(member): float(score) for member, score in entries}
        # Keep what events added meanwhile; drop what has expired.
        for session_id, expiry in self._revoked.items():
            if expiry > now and revoked.get(session_id, 0.0) < expiry:
                revoked[session_id] = expiry
        self._revoked = revoked
        self.last_sync = time.monotonic()

    async def _recovered(self) -> None:
        async with self._transition:
            if self.mode != "degraded":
                return
            log.warning("Redis answers again: normal mode")
            # Connections opened before or during the outage may be half-dead: only the
            # probe's own, just proven, may stay. Drop the idle ones before serving.
            with contextlib.suppress(Exception):
                await self._redis.connection_pool.disconnect(inuse_connections=False)
            self.mode = "normal"
            self.last_error = ""
            # The old subscription may be wedged on a dead connection: start afresh.
            self._start_listener()
            for hook in self._on_recovered:
                try:
                    await hook()
                except Exception:
                    log.exception("recovery hook failed")

    async def _probe_loop(self) -> None:
        while not self._stopping:
            try:
                await asyncio.sleep(self.probe_interval)
                await self.probe()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Redis probe failed unexpectedly")

    # -- events -----------------------------------------------------------------

    def _start_listener(self) -> None:
        if self._listen_task is not None:
            self._listen_task.cancel()
        self._listen_task = asyncio.create_task(self._listen_loop(), name="apex-auth-events")

    async def _listen_loop(self) -> None:
        while not self._stopping:
            pubsub: PubSub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._set_subscribed(True)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._dispatch(message.get("data"))
            except asyncio.CancelledError:
                self._set_subscribed(False)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
                raise
            except Exception as exc:  # noqa: BLE001 - resubscribe after any failure
                log.warning("event subscription lost (%s); retrying", type(exc).__name__)
            self._set_subscribed(False)
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
            await asyncio.sleep(self.probe_interval)

    def _set_subscribed(self, subscribed: bool) -> None:
        if subscribed == self.subscribed:
            return
        self.subscribed = subscribed
        if subscribed:
            self._first_subscription.set()
        for callback in self._on_subscribed if subscribed else self._on_unsubscribed:
            try:
                callback()
            except Exception:
                log.exception("subscription callback failed")

    def _dispatch(self, data: Any) -> None:
        try:
            message = json.loads(data)
        except (TypeError, ValueError):
            return
        if not isinstance(message, dict):
            return
        event_type = message.get("type")
        if event_type == "session.revoked":
            session_id = message.get("session_id")
            if isinstance(session_id, str):
                expiry = time.time() + self.revocation_ttl
                self._revoked[session_id] = max(expiry, self._revoked.get(session_id, 0.0))
        for handler in self._handlers.get(str(event_type), []):
            try:
                handler(message)
            except Exception:
                log.exception("handler of %s failed", event_type)


def is_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis was slow rather than gone."""
    return isinstance(exc, TimeoutError | RedisTimeoutError)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
