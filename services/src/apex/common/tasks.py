"""Stopping background tasks whose cancellation can be lost, and their idle waits.

On Python 3.11 a cancellation can be swallowed: ``asyncio.wait_for`` (used inside asyncpg
and redis-py's pub/sub) returns its inner result instead of raising when the cancel
arrives as that result lands, and redis-py 8.2 can finish a command it was cancelled in
and return its reply; the task carries on. Awaiting a cancelled task once can then wait
for ever. :func:`stop_tasks` repeats the cancel until every task has ended, within a
deadline. A loop's own idle wait uses :func:`wait_event`, which never swallows one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

__all__ = ["stop_tasks", "wait_event"]

# How often a task that is still running is cancelled again.
_REPEAT = 0.05


async def stop_tasks(
    tasks: Iterable[asyncio.Task[Any] | None], timeout: float
) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` (None ignored) until they have ended, at most ``timeout`` seconds;
    the tasks still running then (the caller logs them)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = {task for task in tasks if task is not None and not task.done()}
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(_REPEAT, deadline - loop.time()))
    return pending


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set, at most ``timeout`` seconds; whether it is set.

    ``asyncio.timeout``, not ``wait_for``: on Python 3.11 ``wait_for`` swallows a
    cancellation of the waiting task that arrives as the event is set, and its inner task
    adds a step between the two; ``asyncio.timeout`` tells its own expiry from the task's
    cancellation, which always comes out as CancelledError."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()
