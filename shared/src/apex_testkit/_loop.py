"""Event loops in daemon threads, for what outlives a test's own event loop.

asyncpg connections and redis clients belong to the loop that made them, and each test
runs in a loop of its own. What lives longer than a test lives in a loop of the kit:
the kit's admin connections (database resets, creating databases) in the default one
(`run`), so a reset costs one round trip, not a new connection; a worker's running L2
apps in one of their own (`apex_testkit._sut.live`), so a slow request of an app never
holds up a reset.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class BackgroundLoop:
    """An event loop running in a daemon thread of its own, started on first use."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop (started now if need be)."""
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=self._loop.run_forever, name=self.name, daemon=True
                )
                self._thread.start()
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        """Run `coro` on this loop from synchronous code (another thread) and return its
        result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on this loop from a coroutine of another loop, without blocking that
        loop; cancelling the caller cancels `coro`."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self) -> None:
        """Stop the loop and its thread (what still runs on it is dropped)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        if not thread.is_alive():
            loop.close()


_default = BackgroundLoop("apex-testkit-loop")


def run(coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
    """Run `coro` on the kit's default loop from synchronous code and return its result."""
    return _default.run(coro, timeout)
