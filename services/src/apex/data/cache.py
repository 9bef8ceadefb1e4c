"""The Redis cache of per-tenant summaries, spread over several Redis nodes.

Keys are versioned: ``<prefix>data:v<schema>:summary:<tenant>:<generation>[:<part>]``.
Each tenant has a generation counter (``<prefix>data:v<schema>:gen:<tenant>``) on every
node; a write bumps it on every node (:meth:`Cache.invalidate`), so every entry computed
before the write is unreachable at once, whatever instance or node list reads next, and
expires on its own (APEX_CACHE_TTL). A tenant's entries and the generation they are read
under live on one node, chosen by rendezvous hashing over the configured URLs: adding a
node moves only the tenants that the new node wins.

The cache is never the truth. A node that is down or cut, an entry evicted under
``maxmemory`` or one that is corrupt (not JSON, or another schema version: it is deleted)
are misses, answered by computing from PostgreSQL. One caller per key recomputes under
load: a lock (``SET NX PX``, APEX_CACHE_LOCK_TTL) held by the first, while the others
wait for its entry (or, past the lock's life, compute for themselves without storing);
whoever takes the lock reads again first, since an entry stored and its lock released
after its miss is a hit, not a second recompute.

Adding nodes (001#72): append them to the list, roll the new list out to every instance,
then :meth:`Cache.migrate_from` (old list) moves the current entries of the tenants the
new nodes won, so the addition costs no miss storm. It relies on writers bumping nodes
in list order (:meth:`Cache.invalidate`): a write's bump reaches the old node before the
new one, so an entry copied from the old node under the new node's generation is either
current or made unreachable by that write's later bump (checked with a script on the
new node: the copy lands only if its generation is still the one read first).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError

__all__ = ["SCHEMA_VERSION", "Cache", "CacheResult", "Migrated", "NodeMemory", "rendezvous_node"]

log = logging.getLogger("apex.data.cache")

# Bump when the shape of a cached summary changes: old entries then read as misses.
SCHEMA_VERSION: Final = 1
# How often a caller waiting for another's recompute looks for its entry.
_WAIT_STEP: Final = 0.01
# Deletes the lock only if it is still the caller's (it may have expired and been taken).
_RELEASE: Final = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)

# Copies a tenant's entries onto its new node if the tenant's generation there is still
# ARGV[1] (no write bumped it since it was read): KEYS[1] the generation, then the
# entries' keys; ARGV[2..] value, PX pairs. Never overwrites an entry.
_COPY: Final = """
if (redis.call('get', KEYS[1]) or '0') ~= ARGV[1] then return -1 end
local copied = 0
for i = 2, #KEYS do
  if redis.call('set', KEYS[i], ARGV[2 * i - 2], 'PX', ARGV[2 * i - 1], 'NX') then
    copied = copied + 1
  end
end
return copied
"""
_SCAN_COUNT: Final = 500

CacheResult = Literal["hit", "miss"]


@dataclasses.dataclass(frozen=True)
class NodeMemory:
    """One cache node's memory as Redis reports it (``INFO``): bytes used, its
    ``maxmemory`` (0: none), and the keys it has evicted since it started."""

    node: int
    used_bytes: int
    limit_bytes: int
    evicted_keys: int

    @property
    def pressure(self) -> float:
        """Used over the limit (0.0 without a limit)."""
        return self.used_bytes / self.limit_bytes if self.limit_bytes else 0.0


Compute = Callable[[], Awaitable[Mapping[str, Any]]]


def rendezvous_node(key: str, nodes: Sequence[str]) -> int:
    """The index of the node that owns ``key``: the highest hash of (node, key)."""
    if not nodes:
        raise ValueError("rendezvous hashing needs at least one node")
    scores = [
        hashlib.blake2b(f"{node}\x00{key}".encode(), digest_size=8).digest() for node in nodes
    ]
    return max(range(len(nodes)), key=scores.__getitem__)


@dataclasses.dataclass(frozen=True)
class Migrated:
    """What :meth:`Cache.migrate_from` did: tenants and entries moved to their new node,
    and tenants skipped (their entries were not current, or a write came in between)."""

    tenants: int
    entries: int
    skipped: int


class Cache:
    """Per-tenant cached JSON objects on one or more Redis nodes."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        prefix: str = "",
        ttl: float = 300.0,
        lock_ttl: float = 5.0,
        timeout: float = 1.0,
        on_result: Callable[[CacheResult], None] | None = None,
    ) -> None:
        if not urls:
            raise ValueError("the cache needs at least one Redis URL")
        if ttl <= 0 or lock_ttl <= 0 or timeout <= 0:
            raise ValueError("ttl, lock_ttl and timeout are positive numbers of seconds")
        self.urls = tuple(urls)
        self._nodes = [
            # Short timeouts: a node that is down must cost a request a miss, not its deadline.
            Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
            for url in self.urls
        ]
        self._prefix = f"{prefix}data:v{SCHEMA_VERSION}:"
        self._ttl_ms = max(1, int(ttl * 1000))
        self._lock_ttl = lock_ttl
        self._on_result = on_result
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"Cache(nodes={len(self.urls)})"

    def generation_key(self, tenant: str) -> str:
        """The key of ``tenant``'s generation counter (on every node)."""
        return f"{self._prefix}gen:{tenant}"

    def entry_key(self, tenant: str, generation: int, part: str = "") -> str:
        """The key of ``tenant``'s entry under ``generation`` (``part``: which query)."""
        key = f"{self._prefix}summary:{tenant}:{generation}"
        return f"{key}:{part}" if part else key

    def node_for(self, tenant: str) -> int:
        """The index (in the URL list) of the node holding ``tenant``'s entries."""
        return rendezvous_node(tenant, self.urls)

    async def get_or_compute(
        self,
        tenant: str,
        compute: Compute,
        part: str = "",
        *,
        keep: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> tuple[dict[str, Any], CacheResult]:
        """``tenant``'s cached object, or ``compute()``'s result (stored for the next
        caller unless ``keep`` says no); says whether it was a hit. Never raises for a
        Redis failure."""
        node = self._nodes[self.node_for(tenant)]
        try:
            generation = await self._generation(node, tenant)
            key = self.entry_key(tenant, generation, part)
            cached = await self._read(node, key)
        except RedisError as exc:
            index = self.node_for(tenant)
            log.warning("cache node %d unavailable, reading through: %s", index, exc)
            return await self._computed(compute)
        if cached is not None:
            self._count("hit")
            return cached, "hit"
        return await self._recompute(node, key, compute, keep)

    async def invalidate(self, tenant: str) -> int:
        """Bump ``tenant``'s generation on every node; return how many nodes took it."""
        bumped = 0
        for index, node in enumerate(self._nodes):
            try:
                await node.incr(self.generation_key(tenant))
            except RedisError as exc:
                log.warning("cache node %d missed an invalidation of %s: %s", index, tenant, exc)
            else:
                bumped += 1
        return bumped

    async def warm(self, tenant: str, compute: Compute, part: str = "") -> bool:
        """Compute ``tenant``'s entry and store it now; False if its node is unavailable."""
        generation = await self.generation(tenant)
        if generation is None:
            return False
        return await self.put(tenant, generation, part, await compute())

    async def generation(self, tenant: str) -> int | None:
        """``tenant``'s generation on its node (None: the node is unavailable). Read it
        before computing a value for :meth:`put`: a write that bumps it meanwhile makes
        the value unreachable instead of serving it."""
        try:
            return await self._generation(self._nodes[self.node_for(tenant)], tenant)
        except RedisError:
            return None

    async def put(self, tenant: str, generation: int, part: str, value: Mapping[str, Any]) -> bool:
        """Store ``value`` as ``tenant``'s entry under ``generation`` (read before the
        value was computed); False if its node is unavailable."""
        try:
            await self._store(
                self._nodes[self.node_for(tenant)],
                self.entry_key(tenant, generation, part),
                dict(value),
            )
        except RedisError:
            return False
        return True

    async def migrate_from(self, previous: Sequence[str]) -> Migrated:
        """Move the current entries of the tenants that nodes added after ``previous``
        (the list before, a prefix of this cache's) won from their old node to their new
        one (see the module's docstring). Run it once every instance uses the new list;
        entries of tenants that did not move are left alone."""
        previous = tuple(previous)
        if not previous or self.urls[: len(previous)] != previous:
            raise ValueError(
                "migrate_from: the previous node list must be the start of the new one "
                f"(nodes are added at the end), got {list(previous)} for {list(self.urls)}"
            )
        tenants = entries = skipped = 0
        for index in range(len(previous)):
            moving = await self._entries_leaving(index, previous)
            for tenant, keys in moving.items():
                copied = await self._move(index, tenant, keys)
                if copied is None:
                    skipped += 1
                elif copied:
                    tenants, entries = tenants + 1, entries + copied
        return Migrated(tenants, entries, skipped)

    async def _entries_leaving(self, index: int, previous: Sequence[str]) -> dict[str, list[str]]:
        """The entry keys on node ``index`` of tenants it owned under ``previous`` and
        that another node owns now, by tenant."""
        node = self._nodes[index]
        summary = f"{self._prefix}summary:"
        moving: dict[str, list[str]] = {}
        async for raw in node.scan_iter(match=f"{summary}*", count=_SCAN_COUNT):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            if key.endswith(":lock"):
                continue
            tenant = key[len(summary) :].split(":", 1)[0]
            if rendezvous_node(tenant, previous) == index and self.node_for(tenant) != index:
                moving.setdefault(tenant, []).append(key)
        return moving

    async def _move(self, index: int, tenant: str, keys: Sequence[str]) -> int | None:
        """Copy ``tenant``'s current entries from node ``index`` to its node and delete
        them there: how many were copied, or None when skipped."""
        source, target = self._nodes[index], self._nodes[self.node_for(tenant)]
        try:
            # The new node's generation first: a write's bump reaches it last.
            target_generation = await self._generation(target, tenant)
            source_generation = await self._generation(source, tenant)
            current = f"{self._prefix}summary:{tenant}:{source_generation}"
            parts = [k[len(current) :] for k in keys if k == current or k.startswith(current + ":")]
            values = [
                (await source.get(current + p), await source.pttl(current + p)) for p in parts
            ]
            if await self._generation(source, tenant) != source_generation:
                return None  # a write came in while the entries were read
            live = [(p, v, ttl) for p, (v, ttl) in zip(parts, values, strict=True) if v and ttl > 0]
            new_keys = [
                f"{self._prefix}summary:{tenant}:{target_generation}{p}" for p, _, _ in live
            ]
            args: list[bytes | str] = [str(target_generation)]
            for _, value, ttl in live:
                args += [value, str(ttl)]
            copied = int(
                await target.eval(
                    _COPY, 1 + len(new_keys), self.generation_key(tenant), *new_keys, *args
                )
            )
            if copied < 0:
                return None
            await source.delete(*keys)
        except RedisError as exc:
            log.warning("cache migration of %s from node %d failed: %s", tenant, index, exc)
            return None
        return copied

    async def ping(self) -> list[bool]:
        """Whether each node answers, in URL order."""
        results = []
        for node in self._nodes:
            try:
                results.append(bool(await node.ping()))
            except RedisError:
                results.append(False)
        return results

    async def memory(self) -> list[NodeMemory | None]:
        """Each node's memory (001#70), in URL order; None for a node that does not answer."""
        report: list[NodeMemory | None] = []
        for index, node in enumerate(self._nodes):
            try:
                info = await node.info()
            except (RedisError, OSError):
                report.append(None)
                continue
            report.append(
                NodeMemory(
                    index,
                    int(info.get("used_memory", 0)),
                    int(info.get("maxmemory", 0)),
                    int(info.get("evicted_keys", 0)),
                )
            )
        return report

    async def close(self) -> None:
        """Close every node's connections."""
        for node in self._nodes:
            with contextlib.suppress(RedisError, OSError):
                await node.aclose()

    async def _generation(self, node: Redis, tenant: str) -> int:
        raw = await node.get(self.generation_key(tenant))
        try:
            return int(raw) if raw is not None else 0
        except ValueError:
            # A corrupt counter: start a generation no earlier entry was stored under (the
            # one stored: a second clock reading would be one no entry is ever read under).
            fresh = time.time_ns()
            await node.set(self.generation_key(tenant), fresh)
            return fresh

    async def _read(self, node: Redis, key: str) -> dict[str, Any] | None:
        raw = await node.get(key)
        if raw is None:
            return None
        try:
            entry = json.loads(raw)
            valid = (
                isinstance(entry, dict)
                and entry.get("v") == SCHEMA_VERSION
                and isinstance(entry.get("value"), dict)
            )
        except (ValueError, UnicodeDecodeError):
            valid = False
        if not valid:
            log.warning("corrupt cache entry %s deleted", key)
            await node.delete(key)
            return None
        value: dict[str, Any] = entry["value"]
        return value

    async def _store(self, node: Redis, key: str, value: Mapping[str, Any]) -> None:
        body = json.dumps({"v": SCHEMA_VERSION, "value": value}, separators=(",", ":"))
        await node.set(key, body, px=self._ttl_ms)

    async def _recompute(
        self,
        node: Redis,
        key: str,
        compute: Compute,
        keep: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> tuple[dict[str, Any], CacheResult]:
        lock = f"{key}:lock"
        token = secrets.token_hex(8)
        try:
            owner = await node.set(lock, token, nx=True, px=max(1, int(self._lock_ttl * 1000)))
            if not owner:
                waited = await self._wait_for_entry(node, key, lock)
                if waited is not None:
                    self._count("hit")
                    return waited, "hit"
            else:
                # Another caller may have stored the entry and released its lock between
                # this caller's read that missed and its lock: read again before computing.
                stored = await self._read(node, key)
                if stored is not None:
                    await node.eval(_RELEASE, 1, lock, token)
                    self._count("hit")
                    return stored, "hit"
        except RedisError:
            return await self._computed(compute)
        try:
            value, result = await self._computed(compute)
            if owner and (keep is None or keep(value)):
                with contextlib.suppress(RedisError):
                    await self._store(node, key, value)
        finally:
            # Also when the computation failed: the next caller recomputes at once
            # instead of waiting out the lock's life for an entry that never comes.
            if owner:
                with contextlib.suppress(RedisError):
                    await node.eval(_RELEASE, 1, lock, token)
        return value, result

    async def _wait_for_entry(self, node: Redis, key: str, lock: str) -> dict[str, Any] | None:
        """The entry another caller is computing, once stored; None if its lock went away
        (or expired) without one."""
        deadline = time.monotonic() + self._lock_ttl
        while time.monotonic() < deadline:
            cached = await self._read(node, key)
            if cached is not None:
                return cached
            if not await node.exists(lock):
                return await self._read(node, key)
            await asyncio.sleep(_WAIT_STEP)
        return None

    async def _computed(self, compute: Compute) -> tuple[dict[str, Any], CacheResult]:
        self._count("miss")
        return dict(await compute()), "miss"

    def _count(self, result: CacheResult) -> None:
        if result == "hit":
            self.hits += 1
        else:
            self.misses += 1
        if self._on_result is not None:
            self._on_result(result)
