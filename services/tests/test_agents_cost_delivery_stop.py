"""apex.agents' cost delivery stops with one cancellation: while it waits for records,
and when the cancellation lands in a Redis command that swallows it (redis-py 8.2 can
finish a command it was cancelled in and return its reply: XDEL, in 8 of 1,330 app
stops of agent_tests at L2, each of which then waited 0.5 s for a second cancellation).

The ledger's Redis is a stand-in whose XRANGE the test controls; the task is the one
that called it. How many cancellations it got is `Task.cancelling()` (the count of
cancel requests), not a duration."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from prometheus_client import CollectorRegistry

from apex.agents.cost_records import CostDelivery, CostLedger
from apex.agents.dependencies import DependencyErrors


class LedgerRedis:
    """The stream commands the delivery loop uses: XRANGE finds no record, at once or,
    with `swallow`, after a wait that a cancellation ends without raising."""

    def __init__(self, *, swallow: bool) -> None:
        self.swallow = swallow
        self.calls = 0
        self.called = asyncio.Event()
        self.task: asyncio.Task[Any] | None = None

    async def xrange(self, stream: str, count: int) -> list[Any]:
        self.calls += 1
        self.task = asyncio.current_task()
        self.called.set()
        if self.swallow:
            # A command in flight (never answered here) that a cancellation finishes
            # without raising: its reply is returned.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
        return []


def delivery(redis: LedgerRedis) -> CostDelivery:
    registry = CollectorRegistry()
    ledger = CostLedger(redis, "test:", registry)  # type: ignore[arg-type]
    # An hour between idle cycles: the loop never leaves a wait by itself here.
    return CostDelivery(
        ledger,
        DependencyErrors(registry, 60.0),
        data_url="http://127.0.0.1:9",
        token="usage-token",
        batch=10,
        interval=3600.0,
        timeout=5.0,
    )


async def test_a_stop_while_the_loop_waits_for_records_cancels_it_once() -> None:
    redis = LedgerRedis(swallow=False)
    running = delivery(redis)
    running.start()
    # XRANGE does not suspend: by the time this test runs again, the loop has gone on to
    # its idle wait in the same step.
    await redis.called.wait()
    await running.stop()
    task = redis.task
    assert task is not None
    assert task.cancelled()
    assert task.cancelling() == 1
    assert redis.calls == 1


async def test_a_stop_whose_cancellation_a_redis_command_swallows_ends_the_loop() -> None:
    redis = LedgerRedis(swallow=True)
    running = delivery(redis)
    running.start()
    await redis.called.wait()  # XRANGE is in flight
    await running.stop()
    task = redis.task
    assert task is not None
    # The cycle returned (the cancellation was swallowed) and the loop ended after it,
    # without a second cycle or an idle wait that a second cancellation would have ended.
    assert task.done()
    assert not task.cancelled()
    assert task.cancelling() == 1
    assert redis.calls == 1
