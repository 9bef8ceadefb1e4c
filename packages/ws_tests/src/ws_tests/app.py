"""A client application on the gateway that consumes a user's stream as the contract asks.

Public: `App` tracks the seq it processed, resumes with `last_seq` after a dropped
connection (to the same or a fallback URL) and drops any seq it already has, so a test
can check "no loss, no duplicate" from the application's side.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from websockets.exceptions import ConnectionClosed

from apex_testkit import eventually
from ws_tests.client import DEFAULT_TIMEOUT, Frame, HandshakeRefused, WsClient

__all__ = ["App"]


@dataclass
class App:
    """A client application on top of the gateway: it remembers the last seq it processed,
    reconnects with `last_seq` after a drop and drops any seq it already has.

    `processed` is what the app saw (deduplicated), `raw` every message frame per
    connection (duplicates included), `reconnects` how often it had to reconnect."""

    dial: Callable[..., Awaitable[WsClient]]
    token: str
    url: str
    client: WsClient | None = None
    processed: list[Frame] = field(default_factory=list)
    raw: list[list[Frame]] = field(default_factory=list)
    reconnects: int = 0
    close_codes: list[int | None] = field(default_factory=list)

    @property
    def last_seq(self) -> int:
        return int(self.processed[-1]["seq"]) if self.processed else 0

    async def connect(self, url: str | None = None, *, last_seq: int | None = None) -> WsClient:
        """Connect (to `url`, else the current URL); after a first connection, always with
        the app's last_seq."""
        self.url = url or self.url
        if self.raw:
            last_seq = self.last_seq
        self.client = await self.dial(self.url, self.token, last_seq=last_seq)
        self.raw.append([])
        return self.client

    async def receive(
        self,
        count: int,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        on_message: Callable[[App], Awaitable[None]] | None = None,
        fallback_urls: list[str] | None = None,
    ) -> None:
        """Process messages until the app has `count`; whenever the connection drops,
        reconnect (to the next of `fallback_urls`, else the same URL) with last_seq."""
        while len(self.processed) < count:
            if self.client is None:
                await self.connect()
            assert self.client is not None
            try:
                frame = await self.client.expect("message", timeout=timeout)
            except ConnectionClosed as exc:
                self.close_codes.append(exc.rcvd.code if exc.rcvd else None)
                self.reconnects += 1
                await self._reconnect(fallback_urls.pop(0) if fallback_urls else None)
                continue
            self.raw[-1].append(frame)
            if int(frame["seq"]) > self.last_seq:
                self.processed.append(frame)
                if on_message is not None:
                    await on_message(self)

    async def _reconnect(self, url: str | None) -> None:

        async def reconnected() -> bool:
            try:
                await self.connect(url)
            except (OSError, ConnectionClosed, HandshakeRefused, TimeoutError):
                return False
            return True

        target = url or self.url
        await eventually(reconnected, timeout=DEFAULT_TIMEOUT, message=f"reconnect to {target}")
