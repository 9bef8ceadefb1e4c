"""Heartbeats, leadership and the session sweep: the periodic upkeep of one instance.

Every ``APEX_WS_INSTANCE_TTL / 3`` seconds (at least 0.2 s) the instance renews its
registration (:mod:`apex.gateway.registry`: URL and connection count) and re-elects the
leader tab of each of its users (the oldest live tab leads; a tab that becomes leader
is told ``{"type": "leader"}``). Every ``APEX_WS_SESSION_SWEEP`` seconds it checks that
the sessions of its connections still exist and closes 4003 those whose session is gone:
the second path of a revocation, for when its event was missed. A failed round is logged
and retried at the next one; a cancel always stops the loop (:mod:`apex.gateway.loops`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from apex.gateway.loops import stop_if_cancelled

if TYPE_CHECKING:
    from apex.gateway.server import Gateway

__all__ = ["beat", "check_sessions", "check_sessions_quietly", "sweep", "update_leaders"]

log = logging.getLogger(__name__)


async def beat(gw: Gateway) -> None:
    """Renew the registration and re-elect leaders; until cancelled."""
    interval = max(0.2, gw.settings.instance_ttl / 3)
    while True:
        await asyncio.sleep(interval)
        try:
            await gw.registry.heartbeat(len(gw.connections))
            await update_leaders(gw, list(gw.feeds))
        except (RedisError, OSError) as exc:
            stop_if_cancelled()
            log.warning("heartbeat failed: %r", exc)
        except Exception:
            stop_if_cancelled()
            log.exception("heartbeat failed")


async def sweep(gw: Gateway) -> None:
    """Check the sessions of every connection every APEX_WS_SESSION_SWEEP seconds; until
    cancelled."""
    while True:
        await asyncio.sleep(gw.settings.session_sweep)
        try:
            await check_sessions(gw)
        except (RedisError, OSError) as exc:
            stop_if_cancelled()
            log.warning("session sweep failed: %r", exc)
        except Exception:
            stop_if_cancelled()
            log.exception("session sweep failed")


async def update_leaders(gw: Gateway, user_ids: list[str]) -> None:
    """Tell each user's oldest live tab, if it is here and did not know, that it leads."""
    leaders = await gw.registry.leaders(user_ids)
    for user_id, leader in leaders.items():
        feed = gw.feeds.get(user_id)
        for conn in list(feed.connections.values()) if feed else []:
            is_leader = leader == gw.registry.member(conn.id)
            if is_leader and not conn.leader and conn.last_seq is not None:
                conn.send({"type": "leader"})
            conn.leader = is_leader


async def check_sessions_quietly(gw: Gateway) -> None:
    """:func:`check_sessions`, logging a Redis failure (the next heartbeat retries)."""
    try:
        await check_sessions(gw)
    except (RedisError, OSError) as exc:
        stop_if_cancelled()
        log.warning("session check failed: %r", exc)  # the next sweep retries


async def check_sessions(gw: Gateway) -> None:
    """Close connections whose session is gone (a revocation event may have been missed)."""
    conns = list(gw.connections.values())
    if not conns:
        return
    session_ids = sorted({conn.session_id for conn in conns})
    async with gw.redis.pipeline(transaction=False) as pipe:
        for session_id in session_ids:
            pipe.exists(f"{gw.settings.redis_prefix}sess:{session_id}")
        alive = dict(zip(session_ids, await pipe.execute(), strict=True))
    for conn in conns:
        if not alive.get(conn.session_id):
            conn.close_soon(4003, "session revoked")
