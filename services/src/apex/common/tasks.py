"""Stopping background tasks whose cancellation can be lost.

On Python 3.11 a cancellation can be swallowed: ``asyncio.wait_for`` (used inside asyncpg,
redis-py's pub/sub and the services' own loops) returns its inner result instead of
raising when the cancel arrives as that result lands, and the task carries on. Awaiting a
cancelled task once can then wait for ever. :func:`stop_tasks` repeats the cancel until
every task has ended, within a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["stop_tasks"]

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
