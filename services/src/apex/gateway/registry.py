"""Gateway instances and the tabs (connections) of each user, in Redis.

- ``<prefix>gw:instances``: sorted set, member = instance id, score = the time (epoch
  seconds) its registration expires; each instance renews it every ttl/3 and keeps its
  URL and connection count in the hash ``<prefix>gw:instance:<id>`` (same TTL). An
  instance that stops heartbeating drops out after the TTL.
- ``<prefix>ws:tabs:<uid>``: sorted set, member = ``<instance>/<connection id>``, score
  = registration order (``<prefix>ws:tabs:<uid>:seq``, atomic). The user's leader tab is
  the oldest member on a live instance;
  members of dead instances are ignored (and pruned) so a crash frees its slots.
- ``<prefix>ws:online``: set of users with at least one tab (broadcast audience).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

from redis.asyncio import Redis

__all__ = ["Registry"]

# KEYS: tabs zset, its sequence counter, online set; ARGV: member, user id.
_ADD_TAB = """
local rank = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[1], rank, ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
return rank
"""


class Registry:
    """This instance's view of (and entries in) the shared registry."""

    def __init__(self, redis: Redis, *, prefix: str, instance_id: str, ttl: float) -> None:
        self._redis = redis
        self._prefix = prefix
        self.instance_id = instance_id
        self.ttl = ttl
        self.url = ""
        self.instances_key = f"{prefix}gw:instances"
        self.online_key = f"{prefix}ws:online"
        self.control_channel = f"{prefix}ws:control"
        self._add_tab_script: Any = None

    def _instance_key(self, instance_id: str) -> str:
        return f"{self._prefix}gw:instance:{instance_id}"

    def _tabs_key(self, user_id: str) -> str:
        return f"{self._prefix}ws:tabs:{user_id}"

    @property
    def _add_tab(self) -> Any:
        if self._add_tab_script is None:
            self._add_tab_script = self._redis.register_script(_ADD_TAB)
        return self._add_tab_script

    def member(self, connection_id: str) -> str:
        """The tabs-set member of one of this instance's connections."""
        return f"{self.instance_id}/{connection_id}"

    async def heartbeat(self, connections: int) -> None:
        """Renew this instance's registration."""
        now = time.time()
        key = self._instance_key(self.instance_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.instances_key, {self.instance_id: now + self.ttl})
            pipe.hset(key, mapping={"url": self.url, "connections": connections})
            pipe.expire(key, max(1, math.ceil(self.ttl)))
            # Long-dead instances leave the set (they are ignored as soon as they expire).
            pipe.zremrangebyscore(self.instances_key, "-inf", now - 3600)
            await pipe.execute()

    async def deregister(self) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.instances_key, self.instance_id)
            pipe.delete(self._instance_key(self.instance_id))
            await pipe.execute()

    async def instances(self) -> list[dict[str, Any]]:
        """The live instances: ``[{"id","url","connections"}]``, by id."""
        live = await self._redis.zrangebyscore(self.instances_key, time.time(), "+inf")
        ids = sorted(str(member) for member in live)
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for instance_id in ids:
                pipe.hgetall(self._instance_key(instance_id))
            rows = await pipe.execute()
        return [
            {
                "id": instance_id,
                "url": row.get("url", ""),
                "connections": int(row.get("connections", 0) or 0),
            }
            for instance_id, row in zip(ids, rows, strict=True)
            if row
        ]

    def _live_tabs(self, members: Iterable[Any], live: set[str]) -> list[str]:
        tabs = [str(member) for member in members]
        return [tab for tab in tabs if tab.partition("/")[0] in live]

    async def _live_instances(self, pipe: Any) -> None:
        pipe.zrangebyscore(self.instances_key, time.time(), "+inf")

    def _live_set(self, members: Iterable[Any]) -> set[str]:
        return {str(member) for member in members} | {self.instance_id}

    async def tab_count(self, user_id: str) -> int:
        """How many live connections the user has, on every instance."""
        async with self._redis.pipeline(transaction=False) as pipe:
            await self._live_instances(pipe)
            pipe.zrange(self._tabs_key(user_id), 0, -1)
            live, members = await pipe.execute()
        return len(self._live_tabs(members, self._live_set(live)))

    async def add_tab(self, user_id: str, connection_id: str) -> None:
        """Register a tab; its rank (the oldest leads) is its place in the order tabs
        registered, from one atomic counter: a tab that started earlier but registered
        later never outranks one that already saw itself as the oldest."""
        await self._add_tab(
            keys=[self._tabs_key(user_id), f"{self._tabs_key(user_id)}:seq", self.online_key],
            args=[self.member(connection_id), user_id],
        )

    async def remove_tab(self, user_id: str, connection_id: str) -> None:
        """Drop the tab; the user leaves the online set with their last tab."""
        key = self._tabs_key(user_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(key, self.member(connection_id))
            pipe.zrange(key, 0, -1)
            _, members = await pipe.execute()
        if not members:
            await self._redis.srem(self.online_key, user_id)

    async def leaders(self, user_ids: Iterable[str]) -> dict[str, str | None]:
        """The leader tab (member) of each user; tabs of dead instances are pruned."""
        users = list(user_ids)
        if not users:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            await self._live_instances(pipe)
            for user_id in users:
                pipe.zrange(self._tabs_key(user_id), 0, -1)
            instances, *rows = await pipe.execute()
        live_instances = self._live_set(instances)
        leaders: dict[str, str | None] = {}
        dead: dict[str, list[str]] = {}
        for user_id, members in zip(users, rows, strict=True):
            live = self._live_tabs(members, live_instances)
            leaders[user_id] = live[0] if live else None
            stale = [str(m) for m in members if str(m) not in live]
            if stale:
                dead[user_id] = stale
        if dead:
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id, stale in dead.items():
                    pipe.zrem(self._tabs_key(user_id), *stale)
                await pipe.execute()
        return leaders
