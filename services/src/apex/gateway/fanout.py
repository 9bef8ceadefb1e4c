"""Per-user message logs in Redis: sequence numbers, streams, and the fan-out channel.

Publishing is one Lua script (one round trip) per message, whatever its audience: a
direct message names its recipient, a broadcast names its audience's set (the tenant's
online users, read inside the script). For each recipient ``INCR <prefix>ws:seq:<uid>``
gives the seq and the message is appended to ``<prefix>ws:stream:<uid>`` with the stream
id ``<seq>-0`` (capped at the replay buffer; the stream expires APEX_WS_STREAM_TTL after
its last message); only then is the message announced on the fan-out channel, ONCE for
all its recipients: ``{"m": <body>, "r": [[<uid>, <seq>], ...]}`` (every instance hears
it once and hands each recipient with a feed there its seq). So the seqs, the stream
entries and the notification cannot disagree. Pub/sub only notifies: a gateway that
missed announcements reads the stream. The seq counter does not expire: a user's seqs
never start again at 1 under a client that remembers a higher one (and only users that
exist get one: :mod:`apex.gateway.directory`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any, Final

from redis.asyncio import Redis

__all__ = ["Entry", "MessageLog", "message_frame"]

READ_BATCH: Final = 500

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


@dataclasses.dataclass(frozen=True)
class Entry:
    """One message of a user's log: its seq and its body (JSON without type and seq)."""

    seq: int
    body: str


def message_frame(seq: int, body: str) -> str:
    """The ``{"type":"message","seq":N,...}`` text frame of a logged body."""
    # The body is a non-empty JSON object: splice type and seq in without re-encoding it.
    return f'{{"type":"message","seq":{seq},{body[1:]}'


class MessageLog:
    """The users' message logs in one Redis namespace."""

    def __init__(self, redis: Redis, *, prefix: str, buffer: int, ttl: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._buffer = buffer
        self._ttl = ttl
        self._append = redis.register_script(_APPEND)
        self.channel = f"{prefix}ws:fanout"

    def _seq_key(self, user_id: str) -> str:
        return f"{self._prefix}ws:seq:{user_id}"

    def _stream_key(self, user_id: str) -> str:
        return f"{self._prefix}ws:stream:{user_id}"

    @staticmethod
    def body(*, message_id: Any, sender: str, to: str, data: Any) -> str:
        """The logged body of a message."""
        return json.dumps(
            {"id": message_id, "from": sender, "to": to, "data": data}, separators=(",", ":")
        )

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

    async def current_seq(self, user_id: str) -> int:
        """The seq of the user's newest message (0: none yet)."""
        value = await self._redis.get(self._seq_key(user_id))
        return int(value) if value else 0

    async def read(self, user_id: str, after: int, upto: int | None = None) -> list[Entry]:
        """The logged messages with ``after < seq <= upto`` that are still in the buffer."""
        entries: list[Entry] = []
        start = after + 1
        end = f"{upto}-0" if upto is not None else "+"
        while upto is None or start <= upto:
            rows: Sequence[Any] = await self._redis.xrange(  # type: ignore[assignment]
                self._stream_key(user_id), min=f"{start}-0", max=end, count=READ_BATCH
            )
            for stream_id, fields in rows:
                entries.append(Entry(int(str(stream_id).partition("-")[0]), str(fields["m"])))
            if len(rows) < READ_BATCH:
                break
            start = entries[-1].seq + 1
        return entries

    async def oldest_seq(self, user_id: str) -> int | None:
        """The seq of the oldest message still in the buffer, or None if it is empty."""
        rows = await self._redis.xrange(self._stream_key(user_id), count=1)
        return int(str(rows[0][0]).partition("-")[0]) if rows else None
