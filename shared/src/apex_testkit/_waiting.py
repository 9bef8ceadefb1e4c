"""Waiting for a condition with a deadline: the only way the kit and its tests synchronise."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class DeadlineExceeded(AssertionError):
    """A condition did not become true before its deadline."""


def wait_for(
    condition: Callable[[], T],
    *,
    timeout: float,
    interval: float = 0.005,
    max_interval: float = 0.1,
    message: str | Callable[[], str] = "condition",
    raise_on_timeout: bool = True,
) -> T:
    """Poll `condition` until it returns a truthy value and return that value.

    The interval grows from `interval` to `max_interval` so fast conditions are seen at
    once and slow ones do not burn a core. On timeout raise DeadlineExceeded (or return
    the last falsy value when `raise_on_timeout` is False).
    """
    deadline = time.monotonic() + timeout
    pause = interval
    while True:
        value = condition()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if raise_on_timeout:
                text = message() if callable(message) else message
                raise DeadlineExceeded(f"{text}: not true after {timeout:g} s")
            return value
        time.sleep(min(pause, remaining))
        pause = min(pause * 2, max_interval)


async def eventually(
    condition: Callable[[], Awaitable[T]],
    *,
    timeout: float,
    interval: float = 0.01,
    max_interval: float = 0.05,
    message: str = "condition",
) -> T:
    """Async twin of `wait_for`: await `condition()` until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    pause = interval
    while True:
        value = await condition()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"{message}: not true after {timeout:g} s (last: {value!r})")
        await asyncio.sleep(min(pause, remaining))
        pause = min(pause * 2, max_interval)
