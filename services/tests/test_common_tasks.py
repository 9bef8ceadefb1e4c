"""Stopping background tasks whose cancellation can be lost (`apex.common.tasks`): what
apex.agents' worker pool, auth's resilience and billing's schedule stop their loops with."""

from __future__ import annotations

import asyncio

from apex.common.tasks import stop_tasks


async def test_a_task_that_lost_its_cancel_is_cancelled_again_until_it_ends() -> None:
    started, lost = asyncio.Event(), asyncio.Event()

    async def carries_on() -> None:
        try:
            started.set()
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            lost.set()  # as `asyncio.wait_for` returns its result instead, on Python 3.11
        await asyncio.sleep(60)  # e.g. a consumer's next blocking XREADGROUP

    task = asyncio.create_task(carries_on())
    await started.wait()  # in its first sleep once this test runs again
    assert await stop_tasks([task, None], timeout=30) == set()
    assert lost.is_set()
    assert task.cancelled()


async def test_a_task_still_running_at_the_deadline_is_handed_back() -> None:
    started, stop = asyncio.Event(), asyncio.Event()

    async def refuses() -> None:
        while not stop.is_set():
            try:
                started.set()
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                continue  # every cancel swallowed

    task = asyncio.create_task(refuses())
    await started.wait()
    try:
        assert await stop_tasks([task], timeout=0.2) == {task}
        assert not task.done()
    finally:
        stop.set()
        task.cancel()  # lands in its sleep: the loop sees `stop` and ends
        await asyncio.wait({task})
    assert task.done()
