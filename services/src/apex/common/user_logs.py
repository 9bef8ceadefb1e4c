"""The users' message logs in Redis: how anything reaches a user's WebSocket connections.

apex.gateway delivers what is logged here (``apex.gateway.fanout`` reads the logs and
``apex.gateway.feeds`` hands them to the connections); other services append to them
(apex.agents' run events) with :class:`UserLogs`, in the platform's Redis namespace
(APEX_REDIS_URL and APEX_REDIS_PREFIX, which the services share). Appending is one Lua
script (one round trip) per message, whatever its audience: a direct message names its
recipient, a broadcast names its audience's set (read inside the script). For each
recipient ``INCR <prefix>ws:seq:<uid>`` gives the seq and the message is appended to
``<prefix>ws:stream:<uid>`` with the stream id ``<seq>-0`` (capped at the replay buffer;
the stream expires APEX_WS_STREAM_TTL after its last message); only then is the message
announced on the fan-out channel ``<prefix>ws:fanout``, ONCE for all its recipients:
``{"m": <body>, "r": [[<uid>, <seq>], ...]}``. So the seqs, the stream entries and the
notification cannot disagree.

A body is a JSON object. A client's message is logged without a ``type`` (the gateway
delivers it as ``{"type": "message", "seq", ...}``); a server-side event names its own
type first (:func:`event_body`: ``{"type": "run.event", ...}``), and the gateway delivers
it as ``{"seq", "type": "run.event", ...}``.
"""

from __future__ import annotations

import json
from typing import Any, Final

from redis.asyncio import Redis

__all__ = ["EVENT_PREFIX", "UserLogs", "event_body"]

# How a server-side event's body starts (json.dumps of a dict whose first key is "type").
EVENT_PREFIX: Final = '{"type":'

# The script names each recipient's keys itself (``ARGV[5]`` is the keys' common
# prefix): a broadcast's recipients are only known inside it. Fine on one Redis server
# (which the gateway uses); a Redis Cluster would need the keys declared.
_APPEND: Final = """
-- KEYS[1] (a broadcast): the set of its recipients; without KEYS, ARGV[6] is the one
-- recipient. ARGV[1]: message body (JSON), ARGV[2]: stream length cap, ARGV[3]: fan-out
-- channel, ARGV[4]: stream TTL, ARGV[5]: key prefix. Returns {recipients, last seq}.
local users
if #KEYS > 0 then
  users = redis.call('SMEMBERS', KEYS[1])
else
  users = {ARGV[6]}
end
local recipients = {}
local seq = 0
for i, user in ipairs(users) do
  seq = redis.call('INCR', ARGV[5] .. 'seq:' .. user)
  local stream = ARGV[5] .. 'stream:' .. user
  redis.call('XADD', stream, 'MAXLEN', ARGV[2], seq .. '-0', 'm', ARGV[1])
  redis.call('EXPIRE', stream, ARGV[4])
  recipients[i] = {user, seq}
end
if #recipients > 0 then
  redis.call('PUBLISH', ARGV[3], cjson.encode({m = ARGV[1], r = recipients}))
end
return {#recipients, seq}
"""


def event_body(kind: str, **fields: Any) -> str:
    """The logged body of a server-side event of type ``kind`` (``run.event``)."""
    return json.dumps({"type": kind, **fields}, separators=(",", ":"))


class UserLogs:
    """Appending to the users' message logs in one Redis namespace (``prefix``), each
    capped at ``buffer`` messages and expiring ``ttl`` seconds after its last one."""

    def __init__(self, redis: Redis, *, prefix: str, buffer: int, ttl: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._buffer = buffer
        self._ttl = ttl
        self._append = redis.register_script(_APPEND)
        self.channel = f"{prefix}ws:fanout"

    async def append(self, user_id: str, body: str) -> int:
        """Log ``body`` for ``user_id`` and announce it; return its seq."""
        _, seq = await self._append(args=[*self._args(body), user_id])
        return int(seq)

    async def broadcast(self, audience_key: str, body: str) -> int:
        """Log ``body`` for every member of the set ``audience_key`` (user ids) and
        announce it; return how many got it."""
        count, _ = await self._append(keys=[audience_key], args=self._args(body))
        return int(count)

    def _args(self, body: str) -> list[str | int]:
        return [body, self._buffer, self.channel, self._ttl, f"{self._prefix}ws:"]
