"""The job queue: Redis Streams ``<prefix>agents:jobs:<priority>`` read by the group
``workers``, at least once.

A job is one message ``{run_id}``. A worker reads with XREADGROUP (the high stream first,
then normal, then low), acknowledges with XACK once the run is final, and takes over jobs
another consumer left unacknowledged for ``APEX_JOB_CLAIM_IDLE`` seconds with XAUTOCLAIM
(a worker that died mid-job; a live worker resets the idle time of the jobs it holds).
A stream or group that disappeared (a flushed Redis) is
made again. Cancellations are published on ``<prefix>agents:cancel`` for every worker.

A message also carries ``traceparent`` when the submitting request was traced (the W3C
trace context the worker continues, ``apex.agents.tracing``).
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import ResponseError

__all__ = ["GROUP", "PRIORITIES", "Job", "JobQueue"]

GROUP: Final = "workers"
PRIORITIES: Final = ("high", "normal", "low")


@dataclasses.dataclass(frozen=True)
class Job:
    """One delivered message: its stream and id (for XACK), the run it names and the
    ``traceparent`` of the request that submitted it (apex.agents.tracing), if any."""

    stream: str
    message_id: str
    run_id: uuid.UUID
    traceparent: str | None = None


class JobQueue:
    """The job streams of one Redis namespace."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self.streams = {p: f"{prefix}agents:jobs:{p}" for p in PRIORITIES}
        self.cancel_channel = f"{prefix}agents:cancel"

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
        fields: dict[Any, Any] = {"run_id": str(run_id)}
        if traceparent is not None:
            fields["traceparent"] = traceparent
        await self._redis.xadd(self.streams[priority], fields)

    async def next(self, consumer: str, *, block: float) -> Job | None:
        """The next new job for ``consumer`` by priority, waiting up to ``block`` seconds."""
        for stream in self.streams.values():
            job = await self._read(consumer, {stream: ">"}, block_ms=None)
            if job is not None:
                return job
        return await self._read(
            consumer, dict.fromkeys(self.streams.values(), ">"), block_ms=max(1, int(block * 1000))
        )

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
                return _job(stream, message_id, fields)
        return None

    async def claim(self, consumer: str, idle: float) -> list[Job]:
        """Jobs other consumers left unacknowledged for ``idle`` seconds, now ``consumer``'s."""
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
            claimed.extend(_job(stream, mid, fields) for mid, fields in answer[1] if fields)
        return claimed

    async def touch(self, job: Job, consumer: str) -> None:
        """Reset the job's idle time (XCLAIM JUSTID by its holder): a job still being
        worked on is never claimed by another worker, however long its LLM call takes."""
        await self._redis.xclaim(
            job.stream, GROUP, consumer, min_idle_time=0, message_ids=[job.message_id], justid=True
        )

    async def ack(self, job: Job) -> None:
        await self._redis.xack(job.stream, GROUP, job.message_id)

    async def cancel(self, run_id: uuid.UUID) -> None:
        """Tell every worker to stop the run's work in flight."""
        await self._redis.publish(self.cancel_channel, str(run_id))


def _job(stream: object, message_id: object, fields: dict[str, str]) -> Job:
    return Job(str(stream), str(message_id), uuid.UUID(fields["run_id"]), fields.get("traceparent"))
