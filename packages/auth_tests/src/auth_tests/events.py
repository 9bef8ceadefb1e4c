"""What apex.auth publishes on its Redis channel `<prefix>auth:events`, heard by a test.

Public: `AuthEvents` wraps a redis-py pub/sub already subscribed to the channel (the
`auth_events` fixture makes one for this worker's namespace, L2/L3) and waits for an
event with a deadline, as another auth instance would hear it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

__all__ = ["AuthEvents"]


class AuthEvents:
    """What the platform publishes on `<prefix>auth:events`, heard as another instance would."""

    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub
        self.seen: list[dict[str, Any]] = []

    async def _pull(self, timeout: float) -> None:
        message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        if message is not None and message.get("type") == "message":
            try:
                event = json.loads(message["data"])
            except ValueError:
                event = {"unparsable": message["data"]}
            self.seen.append(event if isinstance(event, dict) else {"value": event})

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = 5.0
    ) -> dict[str, Any]:
        """The first event (seen so far or arriving before the deadline) that matches."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.seen:
                if predicate(event):
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching event in {timeout} s; seen: {self.seen}")
            await self._pull(min(remaining, 0.2))

    async def forget(self, *, settle: float = 0.1) -> None:
        """Drop every event so far, including those still in flight from earlier changes."""
        await self.drain(timeout=settle)
        self.seen.clear()

    async def drain(self, *, timeout: float = 0.3) -> list[dict[str, Any]]:
        """Whatever arrives within `timeout` (to check what was NOT published)."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            await self._pull(min(remaining, 0.05))
        return self.seen
