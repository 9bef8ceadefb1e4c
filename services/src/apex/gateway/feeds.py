"""Ordered, exactly-once delivery of a user's messages to that user's connections.

Each user with connections here has one feed: a task that handles, in order, the
user's announcements (seq + body from pub/sub), joins (welcome, optional replay) and
resyncs (after a Redis outage). Every connection remembers the last seq it got; an
announcement at or below it is a duplicate, one beyond ``last + 1`` is a gap that is
first filled from the stream. So a connection never skips and never duplicates.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from redis.exceptions import RedisError

from apex.gateway.connection import Connection
from apex.gateway.fanout import MessageLog, message_frame
from apex.gateway.loops import stop_if_cancelled

__all__ = ["UserFeed"]

log = logging.getLogger(__name__)

RESYNC_RETRY_SECONDS = 0.2


@dataclasses.dataclass(frozen=True)
class _Announce:
    seq: int
    body: str


@dataclasses.dataclass(frozen=True)
class _Join:
    conn: Connection
    welcome: dict[str, Any]
    resume_from: int | None


@dataclasses.dataclass(frozen=True)
class _Resume:
    conn: Connection
    after: int


@dataclasses.dataclass(frozen=True)
class _Resync:
    pass


_Item = _Announce | _Join | _Resume | _Resync


class UserFeed:
    """Delivery to the connections of one user on this instance."""

    def __init__(self, user_id: str, log_: MessageLog) -> None:
        self.user_id = user_id
        self.connections: dict[str, Connection] = {}
        self._log = log_
        self._items: asyncio.Queue[_Item] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._retry: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._busy = False  # the task is handling an item (it may be awaiting Redis)

    def announce(self, seq: int, body: str) -> None:
        """Deliver message ``seq`` to the user's connections here, in order."""
        # Nothing queued or under way and no connection would see a gap: deliver at once,
        # without waking the feed's task (a broadcast announces to every feed here).
        if not self._busy and self._items.empty() and self._in_step(seq):
            for conn in list(self.connections.values()):
                self._deliver_next(conn, seq, body)
            return
        self._items.put_nowait(_Announce(seq, body))

    def join(self, conn: Connection, welcome: dict[str, Any], resume_from: int | None) -> None:
        """Add ``conn``: send ``welcome`` (with the current seq), then replay after resume_from."""
        self.connections[conn.id] = conn
        self._items.put_nowait(_Join(conn, welcome, resume_from))

    def resume(self, conn: Connection, after: int) -> None:
        self._items.put_nowait(_Resume(conn, after))

    def resync(self) -> None:
        """Catch every connection up with the stream (announcements may have been lost)."""
        self._items.put_nowait(_Resync())

    def _retry_later(self, item: _Item) -> None:
        async def retry() -> None:
            await asyncio.sleep(RESYNC_RETRY_SECONDS)
            self._items.put_nowait(item)

        if isinstance(item, _Resync) and self._retry is not None and not self._retry.done():
            return  # one pending catch-up is enough
        task = asyncio.get_running_loop().create_task(retry())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        if isinstance(item, _Resync):
            self._retry = task

    def leave(self, conn: Connection) -> bool:
        """Remove ``conn``; True when the feed has no connection left (then it is stopped)."""
        self.connections.pop(conn.id, None)
        if self.connections:
            return False
        self.close()
        return True

    def close(self) -> None:
        self._task.cancel()
        for task in list(self._pending):
            task.cancel()

    async def _run(self) -> None:
        while True:
            item = await self._items.get()
            self._busy = True
            try:
                await self._handle(item)
            except RedisError as exc:
                stop_if_cancelled()
                # The stream could not be read (Redis down, or a pooled connection it
                # reset): catch up again shortly, or a missed message would wait for
                # the user's next announcement.
                log.warning("feed of user %s: Redis error: %r; retrying", self.user_id, exc)
                # A join (welcome) or resume is retried as such; anything else is a
                # catch-up of every connection.
                self._retry_later(item if isinstance(item, _Join | _Resume) else _Resync())
            except Exception:
                stop_if_cancelled()
                log.exception("feed of user %s failed on %r", self.user_id, type(item).__name__)
            finally:
                self._busy = False

    async def _handle(self, item: _Item) -> None:
        if isinstance(item, _Announce):
            for conn in list(self.connections.values()):
                await self._deliver(conn, item.seq, item.body)
        elif isinstance(item, _Join):
            await self._join(item)
        elif isinstance(item, _Resume):
            conn = item.conn
            # A resume is the first message: replay up to the welcome's seq, live
            # messages after it are (or will be) delivered by announcements.
            if conn.id in self.connections and item.after < conn.welcome_seq:
                await self._replay(conn, item.after, conn.welcome_seq)
        else:
            current = await self._log.current_seq(self.user_id)
            for conn in list(self.connections.values()):
                if conn.last_seq is not None and current > conn.last_seq:
                    await self._replay(conn, conn.last_seq, current)

    async def _join(self, item: _Join) -> None:
        conn = item.conn
        if conn.id not in self.connections:
            return
        current = await self._log.current_seq(self.user_id)
        conn.send({**item.welcome, "last_seq": current})
        conn.welcome_seq = current
        conn.last_seq = current
        if item.resume_from is not None and item.resume_from < current:
            await self._replay(conn, item.resume_from, current)

    def _in_step(self, seq: int) -> bool:
        """No connection here would see a gap if ``seq`` came next."""
        for conn in self.connections.values():
            last = conn.last_seq
            if last is not None and seq > last + 1:
                return False
        return True

    async def _deliver(self, conn: Connection, seq: int, body: str) -> None:
        last = conn.last_seq
        if last is not None and seq > last + 1:
            await self._replay(conn, last, seq - 1)
        self._deliver_next(conn, seq, body)

    @staticmethod
    def _deliver_next(conn: Connection, seq: int, body: str) -> None:
        """Send ``seq`` if it is the connection's next one (no gap: the caller filled it)."""
        last = conn.last_seq
        if last is None or seq <= last:
            return  # not welcomed yet (the welcome's seq covers it) or a duplicate
        conn.send(message_frame(seq, body))
        conn.last_seq = seq

    async def _replay(self, conn: Connection, after: int, upto: int) -> None:
        """Send the logged messages ``after < seq <= upto``; say so if some were trimmed.

        A replay waits for room in the connection's queue, so a long replay to a client
        that reads is paced by its socket (live messages of this user wait meanwhile).
        """
        entries = await self._log.read(self.user_id, after, upto)
        if not entries or entries[0].seq > after + 1:
            oldest = entries[0].seq if entries else await self._log.oldest_seq(self.user_id)
            conn.error("replay_truncated", oldest_seq=oldest if oldest is not None else upto + 1)
        for entry in entries:
            if not await conn.send_paced(message_frame(entry.seq, entry.body)):
                break
        conn.last_seq = max(conn.last_seq or 0, upto)
