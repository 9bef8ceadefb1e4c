"""Per-user message logs in Redis: sequence numbers, streams, and the fan-out channel.

Publishing is one Lua script per batch of recipients (a direct message is a batch of
one; a broadcast is one script per APPEND_BATCH users), so the seqs, the stream entries
and the notification cannot disagree: for each recipient ``INCR <prefix>ws:seq:<uid>`` gives the seq, the message is appended
to ``<prefix>ws:stream:<uid>`` with the stream id ``<seq>-0`` (capped at the replay
buffer; the stream expires APEX_WS_STREAM_TTL after its last message), and only then is
the whole batch announced on the fan-out channel in ONE message
``{"m": <body>, "r": [[<uid>, <seq>], ...]}`` (every instance hears it once and hands
each recipient with a feed there its seq). Pub/sub only notifies: a gateway that missed
announcements reads the stream. The seq counter does not expire: a user's seqs never
start again at 1 under a client that remembers a higher one (and only users that exist
get one: :mod:`apex.gateway.directory`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from typing import Any, Final

from redis.asyncio import Redis

__all__ = ["Entry", "MessageLog", "message_frame"]

READ_BATCH: Final = 500

# Recipients per script: a broadcast to many users is several scripts, so Redis never
# runs one script for long while its other clients wait.
APPEND_BATCH: Final = 500

_APPEND: Final = """
-- KEYS: per recipient its seq counter, then its stream. ARGV[1]: message body (JSON),
-- ARGV[2]: stream length cap, ARGV[3]: fan-out channel, ARGV[4]: stream TTL,
-- ARGV[5..]: the recipients' user ids (in the order of KEYS). Returns their seqs.
local seqs = {}
local recipients = {}
for i = 5, #ARGV do
  local k = (i - 5) * 2
  local seq = redis.call('INCR', KEYS[k + 1])
  redis.call('XADD', KEYS[k + 2], 'MAXLEN', ARGV[2], seq .. '-0', 'm', ARGV[1])
  redis.call('EXPIRE', KEYS[k + 2], ARGV[4])
  seqs[#seqs + 1] = seq
  recipients[#recipients + 1] = {ARGV[i], seq}
end
redis.call('PUBLISH', ARGV[3], cjson.encode({m = ARGV[1], r = recipients}))
return seqs
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

    def _script_call(self, user_ids: Sequence[str], body: str) -> dict[str, Any]:
        keys = [key for u in user_ids for key in (self._seq_key(u), self._stream_key(u))]
        return {"keys": keys, "args": [body, self._buffer, self.channel, self._ttl, *user_ids]}

    async def append(self, user_id: str, body: str) -> int:
        """Log ``body`` for ``user_id`` and announce it; return its seq."""
        seqs = await self._append(**self._script_call([user_id], body))
        return int(seqs[0])

    async def append_many(self, user_ids: Iterable[str], body: str) -> int:
        """Log ``body`` for each user (a broadcast) and announce it; return how many got it.

        One script (one round trip, one announcement) per APPEND_BATCH users."""
        users = list(user_ids)
        for start in range(0, len(users), APPEND_BATCH):
            await self._append(**self._script_call(users[start : start + APPEND_BATCH], body))
        return len(users)

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
