"""Effective permissions, cached in Redis and in each instance's memory.

Lookups go memory -> Redis ``perm:<uid>`` (TTL 300 s, JSON
``{"at": <epoch seconds computed>, "perms": [...]}``) -> PostgreSQL. Every change
calls :meth:`PermissionCache.invalidate` with the affected users: it deletes their
Redis entries, bumps their ``permver:<uid>`` counters (so a lookup that read
PostgreSQL before the change cannot store its stale result afterwards) and publishes
``{"type": "permissions.changed", "user_ids": [...]}`` on ``<prefix>auth:events``;
every instance drops those users from memory when the event arrives. The memory layer
is used only while this instance is subscribed to the events: after a gap (Redis
outage) it starts empty. If Redis is unreachable during a change, the invalidation is
retried when it comes back; until then lookups bypass both caches.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import asyncpg
from redis.asyncio import Redis

from apex.auth.resilience import REDIS_DOWN

__all__ = ["PERMISSIONS_CHANGED", "PermissionCache"]

log = logging.getLogger(__name__)

PERMISSIONS_CHANGED: Final = "permissions.changed"
CACHE_TTL: Final = 300
_MAX_MEMORY_ENTRIES: Final = 50_000

# Store a computed value only if no invalidation happened since it was computed.
_STORE_IF_CURRENT: Final = """
local version = redis.call('GET', KEYS[2]) or ''
if version == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
  return 1
end
return 0
"""

Loader = Callable[[asyncpg.Connection, uuid.UUID], Awaitable[list[str]]]


class PermissionCache:
    """Effective permissions by user id, with cross-instance invalidation."""

    def __init__(
        self,
        redis: Redis,
        pool: asyncpg.Pool,
        *,
        prefix: str,
        channel: str,
        loader: Loader,
        ttl: int = CACHE_TTL,
    ) -> None:
        self._redis = redis
        self._pool = pool
        self._prefix = prefix
        self._channel = channel
        self._loader = loader
        self.ttl = ttl
        self._store = redis.register_script(_STORE_IF_CURRENT)
        self._memory: dict[str, tuple[float, list[str]]] = {}
        self._epoch = 0  # bumped by every local drop: in-flight loads must not store
        self.memory_enabled = False
        self._pending: set[str] = set()  # invalidations Redis missed (it was down)
        self.not_before = 0.0  # Redis entries computed earlier are ignored (see recovered)

    def key(self, user_id: str) -> str:
        """Redis key of a user's cached permissions."""
        return f"{self._prefix}perm:{user_id}"

    def version_key(self, user_id: str) -> str:
        """Redis key of a user's invalidation counter."""
        return f"{self._prefix}permver:{user_id}"

    async def get(self, user_id: str, *, cached: bool = True) -> list[str]:
        """The sorted effective permissions of ``user_id`` (``cached=False``: from PostgreSQL)."""
        uid = str(uuid.UUID(user_id))
        cached = cached and uid not in self._pending
        if cached and self.memory_enabled:
            entry = self._memory.get(uid)
            if entry is not None and entry[0] > time.monotonic():
                return list(entry[1])
        epoch = self._epoch
        version: str | None = None
        if cached:
            try:
                raw, raw_version = await self._redis.mget(self.key(uid), self.version_key(uid))
                version = _text(raw_version) if raw_version is not None else ""
                entry = json.loads(raw) if raw is not None else None
                # Entries stored before this instance saw Redis come back may predate
                # changes whose invalidation Redis missed: recompute those.
                if isinstance(entry, dict) and float(entry.get("at", 0)) >= self.not_before:
                    permissions = [str(p) for p in entry.get("perms", [])]
                    self._remember(uid, permissions, epoch)
                    return permissions
            except (*REDIS_DOWN, ValueError) as exc:  # type: ignore[misc]
                log.debug("permission cache read failed: %r", exc)
                version = None
        computed_at = time.time()
        async with self._pool.acquire() as conn:
            permissions = await self._loader(conn, uuid.UUID(uid))
        if version is not None:
            value = json.dumps({"at": computed_at, "perms": permissions})
            try:
                await self._store(
                    keys=[self.key(uid), self.version_key(uid)],
                    args=[version, value, self.ttl],
                )
            except REDIS_DOWN as exc:
                log.debug("permission cache write failed: %r", exc)
                return permissions
            self._remember(uid, permissions, epoch)
        return permissions

    def _remember(self, uid: str, permissions: list[str], epoch: int) -> None:
        if not self.memory_enabled or epoch != self._epoch:
            return
        if len(self._memory) >= _MAX_MEMORY_ENTRIES:
            self._memory.clear()
        self._memory[uid] = (time.monotonic() + self.ttl, list(permissions))

    def drop(self, user_ids: Iterable[str]) -> None:
        """Forget users in this instance's memory."""
        self._epoch += 1
        for uid in user_ids:
            self._memory.pop(str(uid), None)

    def clear(self) -> None:
        """Forget everything in this instance's memory."""
        self._epoch += 1
        self._memory.clear()

    def reset(self) -> None:
        """Forget everything, pending invalidations included, as a fresh instance would
        (``apex.auth.reset_memory``)."""
        self.clear()
        self._pending.clear()
        self.not_before = 0.0

    def handle_event(self, message: dict[str, Any]) -> None:
        """Pub/sub handler of ``permissions.changed``."""
        user_ids = message.get("user_ids")
        if isinstance(user_ids, list):
            self.drop(str(uid) for uid in user_ids)

    def subscribed(self) -> None:
        """Events flow (again): memory may be used, starting empty (some may have been missed)."""
        self.clear()
        self.memory_enabled = True

    def unsubscribed(self) -> None:
        """Events may be missed: stop trusting memory."""
        self.memory_enabled = False
        self.clear()

    async def invalidate(self, user_ids: Iterable[str]) -> None:
        """After a change: drop the users everywhere (this instance, Redis, other instances)."""
        uids = sorted({str(uid) for uid in user_ids})
        if not uids:
            return
        self.drop(uids)
        try:
            await self._invalidate_in_redis(uids)
        except REDIS_DOWN as exc:
            log.warning(
                "could not invalidate cached permissions of %d users (%s): retried when Redis "
                "answers again",
                len(uids),
                type(exc).__name__,
            )
            self._pending.update(uids)

    async def recovered(self) -> None:
        """Recovery hook: retry missed invalidations, distrust entries from before the outage.

        Another instance may have changed permissions while Redis was down without
        being able to delete the Redis entries (it retries when it recovers, which may
        be later than this instance, or never if it died).
        """
        self.not_before = time.time()
        self.clear()
        if self._pending:
            uids = sorted(self._pending)
            await self._invalidate_in_redis(uids)
            self._pending.difference_update(uids)

    async def _invalidate_in_redis(self, uids: list[str]) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            for uid in uids:
                pipe.delete(self.key(uid))
                pipe.incr(self.version_key(uid))
                pipe.expire(self.version_key(uid), self.ttl * 2)
            pipe.publish(self._channel, json.dumps({"type": PERMISSIONS_CHANGED, "user_ids": uids}))
            await pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
