"""Pub/sub: what this instance hears from the others and from apex.auth.

One task follows three Redis channels: the fan-out channel (``ws:fanout``: a message
was logged for its recipients, one notification listing each one's seq; the feeds here
of those users deliver it), the control channel
(``ws:control``: a user's tabs changed, so leadership may have moved) and apex.auth's
events (``auth:events``: a revoked session closes its connections 4003; changed
permissions are pushed to the user's connections, and remembered for their checks).
Pub/sub only notifies: after a Redis outage the task resubscribes, every feed catches up
from the streams, and the sessions are checked again (a revocation may have been missed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any, Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

from apex.gateway import heartbeat, messages
from apex.gateway.loops import stop_if_cancelled

if TYPE_CHECKING:
    from apex.gateway.server import Gateway

__all__ = ["follow"]

log = logging.getLogger(__name__)

RESUBSCRIBE_DELAY_SECONDS: Final = 0.5


async def follow(gw: Gateway) -> None:
    """Follow the fan-out, control and auth channels (sets ``gw.subscribed`` once
    subscribed); after an outage resubscribe and catch every feed up from the streams.
    Runs until cancelled."""
    outage = False
    while True:
        client = Redis.from_url(
            gw.settings.redis_url,
            decode_responses=True,
            socket_connect_timeout=2,
            health_check_interval=2,
        )
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(gw.log.channel, gw.registry.control_channel, gw.auth_channel)
            if outage:
                log.info("pub/sub resubscribed after a Redis outage: resyncing")
                _resync(gw)
                outage = False
            gw.subscribed.set()
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    _dispatch(gw, str(message["channel"]), str(message["data"]))
        except (RedisError, OSError) as exc:
            stop_if_cancelled()
            if not outage:
                log.warning("pub/sub connection lost: %r; resubscribing", exc)
            outage = True
            await asyncio.sleep(RESUBSCRIBE_DELAY_SECONDS)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
            with contextlib.suppress(Exception):
                await client.aclose()


def _resync(gw: Gateway) -> None:
    for feed in gw.feeds.values():
        feed.resync()
    gw.spawn(heartbeat.check_sessions_quietly(gw))


def _dispatch(gw: Gateway, channel: str, data: str) -> None:
    if not gw.connections and not gw.feeds:
        # Every event is about connections here (messages for their users, their tabs,
        # their sessions): an instance with none has nothing to do, not even parse it.
        return
    try:
        event = json.loads(data)
    except ValueError:
        return
    if not isinstance(event, dict):
        return
    if channel == gw.log.channel:
        # An announcement of another shape (an instance of an older version) has no
        # recipients here: its users' next messages fill the gap from the streams.
        body, feeds = str(event.get("m")), gw.feeds
        for user_id, seq in event.get("r") or ():
            feed = feeds.get(user_id)
            if feed is not None:
                feed.announce(int(seq), body)
    elif channel == gw.registry.control_channel:
        if event.get("type") == "tabs" and event.get("user_id") in gw.feeds:
            gw.spawn(heartbeat.update_leaders(gw, [str(event["user_id"])]))
    elif channel == gw.auth_channel:
        _on_auth_event(gw, event)


def _on_auth_event(gw: Gateway, event: dict[str, Any]) -> None:
    kind = event.get("type")
    if kind == "session.revoked":
        session_id = event.get("session_id")
        for conn in list(gw.connections.values()):
            if conn.session_id == session_id:
                conn.close_soon(4003, "session revoked")
    elif kind == "permissions.changed":
        user_ids = event.get("user_ids") or []
        if isinstance(user_ids, list):
            for user_id in user_ids:
                feed = gw.feeds.get(str(user_id))
                for conn in list(feed.connections.values()) if feed else []:
                    conn.permissions = None  # no check may use them until fetched again
                    gw.spawn(messages.push_permissions(gw, conn))
