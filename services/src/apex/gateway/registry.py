"""Gateway instances and the tabs (connections) of each user, in Redis.

- ``<prefix>gw:instances``: sorted set, member = instance id, score = the time (epoch
  seconds) its registration expires; each instance renews it every ttl/3 and keeps its
  URL and connection count in the hash ``<prefix>gw:instance:<id>`` (same TTL). An
  instance that stops heartbeating drops out after the TTL.
- ``<prefix>ws:tabs:<uid>``: sorted set, member = ``<instance>/<connection id>``, score
  = registration order (``<prefix>ws:tabs:<uid>:seq``, atomic). The user's leader tab is
  the oldest member on a live instance;
  members of dead instances are ignored (and pruned) so a crash frees its slots. A tab
  is reserved at the handshake by one script that counts the user's live tabs on every
  instance and adds the new one only under the limit: parallel handshakes, on one
  instance or several, never admit more than APEX_WS_MAX_CONNECTIONS_PER_USER.
- ``<prefix>ws:tenant-tabs:<tenant>``: set of the tenant's tabs (``<instance>/<connection
  id>``), counted by the same script against the tenant's plan's ``ws_connections`` when
  the gateway enforces plan limits (tabs of dead instances are pruned the same way).
- ``<prefix>ws:online:<tenant>``: set of the tenant's users with at least one tab (the
  audience of the tenant's broadcasts; ``-`` stands for "no tenant").
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any, Literal

from redis.asyncio import Redis

__all__ = ["Registry", "Reservation"]

# What reserve_tab did: reserved the tab, or refused it for the user's or the tenant's limit.
Reservation = Literal["reserved", "user_limit", "tenant_limit"]

# KEYS: tabs zset, its sequence counter, the tenant's online set, the instances zset, the
# tenant's tabs set.
# ARGV: member, user id, now (epoch s), the per-user limit, this instance's id, the
# tenant's limit (-1: none), whether the user has a tenant ("1"/"0").
# Returns the new tab's rank, 0 when the user already has `limit` live tabs, -1 when the
# tenant already has its limit of live tabs.
_RESERVE_TAB = """
local live = {[ARGV[5]] = true}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], ARGV[3], '+inf')) do
  live[id] = true
end
local function count_live(key, members, remove)
  local count = 0
  for _, member in ipairs(members) do
    if live[string.match(member, '^([^/]*)/') or ''] then
      count = count + 1
    else
      redis.call(remove, key, member)
    end
  end
  return count
end
if count_live(KEYS[1], redis.call('ZRANGE', KEYS[1], 0, -1), 'ZREM') >= tonumber(ARGV[4]) then
  return 0
end
if ARGV[7] == '1' then
  local tenant_count = count_live(KEYS[5], redis.call('SMEMBERS', KEYS[5]), 'SREM')
  if tonumber(ARGV[6]) >= 0 and tenant_count >= tonumber(ARGV[6]) then
    return -1
  end
  redis.call('SADD', KEYS[5], ARGV[1])
end
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
        self.control_channel = f"{prefix}ws:control"
        self._reserve_tab = redis.register_script(_RESERVE_TAB)

    def _instance_key(self, instance_id: str) -> str:
        return f"{self._prefix}gw:instance:{instance_id}"

    def _tabs_key(self, user_id: str) -> str:
        return f"{self._prefix}ws:tabs:{user_id}"

    def online_key(self, tenant_id: str | None) -> str:
        """The set of the tenant's users with at least one tab (its broadcasts' audience)."""
        return f"{self._prefix}ws:online:{tenant_id or '-'}"

    def tenant_tabs_key(self, tenant_id: str) -> str:
        """The set of the tenant's tabs (counted against its plan's ws_connections)."""
        return f"{self._prefix}ws:tenant-tabs:{tenant_id}"

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

    async def reserve_tab(
        self,
        user_id: str,
        tenant_id: str | None,
        connection_id: str,
        *,
        limit: int,
        tenant_limit: int | None = None,
    ) -> Reservation:
        """Register a tab if the user has fewer than ``limit`` live tabs on all instances
        and the tenant fewer than ``tenant_limit`` (None: no limit); anything but
        ``"reserved"`` is a refusal with nothing registered. Counting and adding are one
        script, so parallel handshakes cannot all see room for themselves. The tab's rank
        (the oldest leads) is its place in the order tabs registered: a tab that started
        earlier but registered later never outranks one that already saw itself as the
        oldest."""
        key = self._tabs_key(user_id)
        rank = int(
            await self._reserve_tab(
                keys=[
                    key,
                    f"{key}:seq",
                    self.online_key(tenant_id),
                    self.instances_key,
                    self.tenant_tabs_key(tenant_id or "-"),
                ],
                args=[
                    self.member(connection_id),
                    user_id,
                    time.time(),
                    limit,
                    self.instance_id,
                    -1 if tenant_limit is None else tenant_limit,
                    "1" if tenant_id else "0",
                ],
            )
        )
        if rank > 0:
            return "reserved"
        return "user_limit" if rank == 0 else "tenant_limit"

    async def remove_tab(self, user_id: str, tenant_id: str | None, connection_id: str) -> None:
        """Drop the tab; the user leaves their tenant's online set with their last tab."""
        key = self._tabs_key(user_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(key, self.member(connection_id))
            pipe.zrange(key, 0, -1)
            if tenant_id:
                pipe.srem(self.tenant_tabs_key(tenant_id), self.member(connection_id))
            _, members, *_ = await pipe.execute()
        if not members:
            await self._redis.srem(self.online_key(tenant_id), user_id)

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
