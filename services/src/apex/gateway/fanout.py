"""Per-user message logs in Redis, as the gateway reads them: seqs, streams, frames.

Writing a log (the seq counter, the stream, the announcement on the fan-out channel, in
one Lua script) is :class:`apex.common.user_logs.UserLogs`, shared with the services
that send users events (apex.agents' run events); :class:`MessageLog` adds what the
gateway reads: a user's current seq and the logged messages of a range. Pub/sub only
notifies: a gateway that missed announcements reads the stream. The seq counter does not
expire: a user's seqs never start again at 1 under a client that remembers a higher one
(and only users that exist get one: :mod:`apex.gateway.directory`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any, Final

from apex.common.user_logs import EVENT_PREFIX, UserLogs

__all__ = ["Entry", "MessageLog", "message_frame"]

READ_BATCH: Final = 500


@dataclasses.dataclass(frozen=True)
class Entry:
    """One message of a user's log: its seq and its body (JSON without type and seq)."""

    seq: int
    body: str


def message_frame(seq: int, body: str) -> str:
    """The ``{"type":"message","seq":N,...}`` text frame of a logged body; a server-side
    event's body names its own type (``{"seq":N,"type":"run.event",...}``)."""
    # The body is a non-empty JSON object: splice type and seq in without re-encoding it.
    if body.startswith(EVENT_PREFIX):
        return f'{{"seq":{seq},{body[1:]}'
    return f'{{"type":"message","seq":{seq},{body[1:]}'


class MessageLog(UserLogs):
    """The users' message logs in one Redis namespace: appending (:class:`UserLogs`) and
    reading."""

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
