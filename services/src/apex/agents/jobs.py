"""The job queue: Redis Streams ``<prefix>agents:jobs:<priority>`` read by the group
``workers``, at least once; scheduled jobs and retries in a sorted set; a dead-letter
stream.

A job is one message ``{run_id, attempt}``. A worker reads with XREADGROUP (the high
stream first, then normal, then low, except that a normal or low stream whose next job
has waited longer than ``APEX_JOB_AGING`` is read first: no starvation), acknowledges
with XACK once the run is final, and takes over jobs another consumer left
unacknowledged for ``APEX_JOB_CLAIM_IDLE`` seconds with XAUTOCLAIM (a worker that died
mid-job; a live worker resets the idle time of the jobs it holds). A claimed job's
attempt counts its deliveries, so a job that kills its workers ends in the dead letters.

Jobs due later (a run's ``run_at``, a retry after its backoff, a run whose tenant is at
its limit) wait in the sorted set ``<prefix>agents:scheduled`` (score: due time in epoch
milliseconds); every worker moves the due ones to their stream (a Lua script: moved
once). A job that cannot be done (failed on its last attempt, a message naming no run)
goes to the stream ``<prefix>agents:dlq`` with its reason. A stream or group that
disappeared (a flushed Redis) is made again. Cancellations are published on
``<prefix>agents:cancel`` for every worker.

A message also carries ``traceparent`` when the submitting request was traced (the W3C
trace context the worker continues, ``apex.agents.tracing``).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import random
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import ResponseError

__all__ = [
    "GROUP",
    "MAX_SCHEDULE_AHEAD",
    "PRIORITIES",
    "Job",
    "JobQueue",
    "backoff",
    "parse_run_at",
]

GROUP: Final = "workers"
PRIORITIES: Final = ("high", "normal", "low")
# How far ahead a run may be scheduled (`run_at`).
MAX_SCHEDULE_AHEAD: Final = datetime.timedelta(days=30)
# How many entries of the dead-letter stream GET /admin/queues shows (newest first).
RECENT_DEAD_LETTERS: Final = 10
# Due jobs one promotion moves at most (the next worker's turn moves the rest).
_PROMOTE_BATCH: Final = 100
_RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})"
)

# KEYS: the scheduled set, the high, normal and low streams; ARGV: the batch size. Moves
# the due members to their priority's stream, removing each (all or nothing: a script
# runs alone), and answers the milliseconds until the next member is due (-1: none).
_PROMOTE: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local streams = {high = KEYS[2], normal = KEYS[3], low = KEYS[4]}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local ok, job = pcall(cjson.decode, member)
  if ok and type(job) == 'table' and type(job.run_id) == 'string' then
    local stream = streams[job.priority] or KEYS[3]
    redis.call('XADD', stream, '*', 'run_id', job.run_id, 'attempt', tostring(job.attempt))
  else
    -- Not one of ours: queued as it is, a message naming no run (dead-lettered).
    redis.call('XADD', KEYS[3], '*', 'member', member)
  end
  redis.call('ZREM', KEYS[1], member)
end
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #next == 0 then return -1 end
return math.max(0, tonumber(next[2]) - now)
"""


@dataclasses.dataclass(frozen=True)
class Job:
    """One delivered message: its stream and id (for XACK), the run it names (None: a
    message naming no valid run) and which attempt at it this is (1 the first)."""

    stream: str
    message_id: str
    priority: str
    run_id: uuid.UUID | None
    attempt: int = 1
    fields: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def traceparent(self) -> str | None:
        """The W3C trace context of the request that submitted it (apex.agents.tracing)."""
        return self.fields.get("traceparent")


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds before the attempt after ``attempt``: full jitter,
    uniform(0, min(cap, base * 2^(attempt-1)))."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


def parse_run_at(text: str, now: datetime.datetime) -> datetime.datetime:
    """``run_at`` as an aware datetime: RFC 3339 with an offset, after ``now`` and at
    most MAX_SCHEDULE_AHEAD later; ValueError saying why not."""
    if not _RFC3339.fullmatch(text):
        raise ValueError("run_at must be an RFC 3339 date-time with an offset")
    try:
        when = datetime.datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValueError("run_at is not a valid date-time") from None
    if when <= now:
        raise ValueError("run_at must be in the future")
    if when - now > MAX_SCHEDULE_AHEAD:
        raise ValueError(f"run_at must be at most {MAX_SCHEDULE_AHEAD.days} days ahead")
    return when


class JobQueue:
    """The job streams, the scheduled set and the dead letters of one Redis namespace."""

    def __init__(self, redis: Redis, prefix: str, *, aging: float = 10.0) -> None:
        self._redis = redis
        self._aging_ms = aging * 1000
        self.streams = {p: f"{prefix}agents:jobs:{p}" for p in PRIORITIES}
        self.cancel_channel = f"{prefix}agents:cancel"
        self.scheduled = f"{prefix}agents:scheduled"
        self.dlq = f"{prefix}agents:dlq"
        self._priority_of = {stream: p for p, stream in self.streams.items()}
        self._promote = redis.register_script(_PROMOTE)

    async def ensure_groups(self) -> None:
        """Create each stream's group (and the stream) unless it exists."""
        for stream in self.streams.values():
            try:
                await self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def enqueue(
        self, run_id: uuid.UUID, priority: str, *, traceparent: str | None = None
    ) -> None:
        fields: dict[Any, Any] = {"run_id": str(run_id), "attempt": "1"}
        if traceparent is not None:
            fields["traceparent"] = traceparent
        await self._redis.xadd(self.streams[priority], fields)

    async def schedule(self, run_id: uuid.UUID, priority: str, due: float) -> None:
        """Queue the run's first attempt at ``due`` (epoch seconds)."""
        await self._redis.zadd(self.scheduled, {_member(run_id, priority, 1): due * 1000})

    async def promote(self) -> float | None:
        """Move the due scheduled jobs to their streams; seconds until the next is due
        (None: nothing scheduled)."""
        keys = [self.scheduled, *self.streams.values()]
        wait = int(await self._promote(keys=keys, args=[_PROMOTE_BATCH]))
        return None if wait < 0 else wait / 1000

    async def next(self, consumer: str, *, block: float) -> Job | None:
        """The next new job for ``consumer`` (aged streams first, then by priority),
        waiting up to ``block`` seconds."""
        aged = await self._aged()
        order = [*aged, *(s for s in self.streams.values() if s not in aged)]
        for stream in order:
            job = await self._read(consumer, {stream: ">"}, block_ms=None)
            if job is not None:
                return job
        return await self._read(
            consumer, dict.fromkeys(self.streams.values(), ">"), block_ms=max(1, int(block * 1000))
        )

    async def _aged(self) -> list[str]:
        """The normal and low streams whose next undelivered job has waited longer than
        the aging window, the longest-waiting first (ages by Redis's clock: a stream id
        is its entry's time in milliseconds)."""
        candidates = [self.streams["normal"], self.streams["low"]]
        try:
            seconds, micros = await self._redis.time()
            heads = {}
            for stream in candidates:
                group = await self._group(stream)
                if group is None or group.get("lag") == 0:
                    continue
                after = "(" + str(group["last-delivered-id"])
                entries: Any = await self._redis.xrange(stream, min=after, max="+", count=1)
                if entries:
                    heads[stream] = int(str(entries[0][0]).split("-")[0])
        except ResponseError as exc:
            if "no such key" not in str(exc).lower():
                raise
            await self.ensure_groups()
            return []
        now_ms = seconds * 1000 + micros // 1000
        aged = [s for s, since in heads.items() if now_ms - since >= self._aging_ms]
        return sorted(aged, key=heads.__getitem__)

    async def _group(self, stream: str) -> dict[str, Any] | None:
        groups: Any = await self._redis.xinfo_groups(stream)
        for group in groups:
            if group["name"] == GROUP:
                return dict(group)
        return None

    async def _read(
        self, consumer: str, streams: dict[str, str], *, block_ms: int | None
    ) -> Job | None:
        # redis-py types the reply loosely: [[stream, [(id, fields), ...]], ...].
        wanted: dict[Any, Any] = dict(streams)
        try:
            answer: Any = await self._redis.xreadgroup(
                GROUP, consumer, wanted, count=1, block=block_ms
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_groups()
            return None
        for stream, messages in answer or []:
            for message_id, fields in messages:
                return self._job(stream, message_id, fields)
        return None

    async def claim(self, consumer: str, idle: float) -> list[Job]:
        """Jobs other consumers left unacknowledged for ``idle`` seconds, now ``consumer``'s;
        each one's attempt counts the deliveries of its message."""
        claimed: list[Job] = []
        for stream in self.streams.values():
            try:
                answer: Any = await self._redis.xautoclaim(
                    stream, GROUP, consumer, min_idle_time=max(1, int(idle * 1000)), count=10
                )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self.ensure_groups()
                continue
            for message_id, fields in answer[1]:
                if not fields:
                    continue
                pending: Any = await self._redis.xpending_range(
                    stream, GROUP, min=message_id, max=message_id, count=1
                )
                delivered = int(pending[0]["times_delivered"]) if pending else 1
                job = self._job(stream, message_id, fields)
                claimed.append(dataclasses.replace(job, attempt=job.attempt + delivered - 1))
        return claimed

    async def touch(self, job: Job, consumer: str) -> None:
        """Reset the job's idle time (XCLAIM JUSTID by its holder, which leaves its
        delivery count alone): a job still being worked on is never claimed by another
        worker, however long its LLM call takes."""
        await self._redis.xclaim(
            job.stream, GROUP, consumer, min_idle_time=0, message_ids=[job.message_id], justid=True
        )

    async def ack(self, job: Job) -> None:
        await self._redis.xack(job.stream, GROUP, job.message_id)

    async def later(self, job: Job, delay: float, *, attempt: int) -> None:
        """Acknowledge the job and queue attempt ``attempt`` of its run ``delay`` seconds
        from now (one MULTI: never both lost nor both kept)."""
        due_ms = (time.time() + delay) * 1000
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self.scheduled, {_member(job.run_id, job.priority, attempt): due_ms})
            pipe.xack(job.stream, GROUP, job.message_id)
            await pipe.execute()

    async def bury(self, job: Job, reason: str, detail: str) -> None:
        """Acknowledge the job and add it to the dead letters with ``reason`` (one MULTI)."""
        entry: dict[Any, Any] = {
            "run_id": "" if job.run_id is None else str(job.run_id),
            "reason": reason,
            "detail": detail[:500],
            "attempts": str(job.attempt),
            "priority": job.priority,
            "message_id": job.message_id,
            "message": json.dumps(dict(job.fields), sort_keys=True)[:1000],
            "failed_at": datetime.datetime.now(datetime.UTC).isoformat(),
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dlq, entry)
            pipe.xack(job.stream, GROUP, job.message_id)
            await pipe.execute()

    async def report(self) -> dict[str, Any]:
        """Per priority the jobs waiting (``depth``) and delivered but not acknowledged
        (``pending``); jobs ``scheduled`` for later; the dead letters' count (``dlq``) and
        the newest of them."""
        queues: dict[str, dict[str, int]] = {}
        for priority, stream in self.streams.items():
            try:
                group = await self._group(stream)
            except ResponseError:  # no stream yet: nothing was ever queued
                group = None
            if group is None:  # no worker made the group yet: every job waits
                queues[priority] = {"depth": int(await self._redis.xlen(stream)), "pending": 0}
                continue
            depth = group.get("lag")
            if depth is None:  # Redis cannot tell (entries deleted): count them
                after = "(" + str(group["last-delivered-id"])
                waiting: Any = await self._redis.xrange(stream, min=after, max="+")
                depth = len(waiting)
            queues[priority] = {"depth": int(depth), "pending": int(group["pending"])}
        recent: Any = await self._redis.xrevrange(self.dlq, count=RECENT_DEAD_LETTERS)
        return {
            "queues": queues,
            "scheduled": int(await self._redis.zcard(self.scheduled)),
            "dlq": int(await self._redis.xlen(self.dlq)),
            "dead_letters": [{"id": str(mid), **fields} for mid, fields in recent],
        }

    async def cancel(self, run_id: uuid.UUID) -> None:
        """Tell every worker to stop the run's work in flight."""
        await self._redis.publish(self.cancel_channel, str(run_id))

    def _job(self, stream: object, message_id: object, fields: dict[str, str]) -> Job:
        """The delivered message as a job; a message whose run id or attempt does not
        parse is a job of no run (it goes to the dead letters)."""
        priority = self._priority_of.get(str(stream), "normal")
        job = Job(str(stream), str(message_id), priority, None, 1, dict(fields))
        try:
            run_id = uuid.UUID(fields["run_id"])
            attempt = int(fields.get("attempt", "1"))
        except (KeyError, ValueError):
            return job
        if attempt < 1:
            return job
        return dataclasses.replace(job, run_id=run_id, attempt=attempt)


def _member(run_id: uuid.UUID | None, priority: str, attempt: int) -> str:
    return json.dumps({"run_id": str(run_id), "priority": priority, "attempt": attempt})
