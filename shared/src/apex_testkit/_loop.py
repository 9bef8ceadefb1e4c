"""A private event loop in a daemon thread for the kit's own async clients.

asyncpg connections belong to the loop that made them, and each test runs in a loop of
its own; the kit's long-lived admin connections (database resets, creating databases)
live here instead, so a reset costs one round trip, not a new connection.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def run(coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
    """Run `coro` on the kit's loop from synchronous code and return its result."""
    global _loop
    with _lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(
                target=_loop.run_forever, name="apex-testkit-loop", daemon=True
            ).start()
    return asyncio.run_coroutine_threadsafe(coro, _loop).result(timeout)
