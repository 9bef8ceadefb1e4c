"""Background loops that stop when cancelled, even when a library swallowed the cancel.

A loop that logs a failed round and tries again must not take a cancellation for one
more failure: some client libraries turn a cancel that races their own timeout into
their own error (redis-py into a RedisError), and a loop that catches that error would
run on after the gateway asked it to stop (the shutdown then waited on it forever).
asyncio still counts the request (``Task.cancelling()``), so every retrying loop calls
:func:`stop_if_cancelled` where it would carry on.
"""

from __future__ import annotations

import asyncio

__all__ = ["stop_if_cancelled"]


def stop_if_cancelled() -> None:
    """Raise CancelledError if the current task was asked to stop (a cancel whose
    CancelledError something swallowed)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
