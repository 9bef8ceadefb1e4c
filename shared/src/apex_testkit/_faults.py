"""A TCP fault proxy, in the spirit of toxiproxy: put it between a service and one of
its dependencies, then make the network slow, narrow, silent, broken or gone.

    proxy = FaultProxy("redis://127.0.0.1:6379/1").start()
    url = proxy.url_for("redis://127.0.0.1:6379/1")   # the same URL, through the proxy
    proxy.latency(200, jitter_ms=20)    # every chunk, either way, 180..220 ms later
    proxy.bandwidth(10_000)             # at most 10 kB/s each way
    proxy.blackhole()                   # accept and read, never forward nor answer
    proxy.reset_peers()                 # RST every live connection (both sides)
    proxy.down(); proxy.up()            # refuse connections (nothing listens) / listen again
    proxy.clear()                       # no faults, listening
    proxy.stats                         # connections, bytes each way, resets
    proxy.stop()

It runs an asyncio loop in a thread of the test process; every control call returns
once the change is in effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

T = TypeVar("T")

CHUNK = 65536
DEFAULT_PORTS = {
    "redis": 6379,
    "rediss": 6379,
    "postgres": 5432,
    "postgresql": 5432,
    "http": 80,
    "https": 443,
    "smtp": 25,
    "clickhouse": 9000,
}


@dataclass(frozen=True)
class ProxyStats:
    """What went through a proxy since it started (or since `reset_stats`)."""

    connections: int = 0  # accepted
    active: int = 0  # open right now
    bytes_up: int = 0  # client -> upstream, forwarded
    bytes_down: int = 0  # upstream -> client, forwarded
    dropped: int = 0  # bytes a blackhole swallowed
    resets: int = 0  # connections reset by reset_peers/down
    upstream_errors: int = 0  # connections whose upstream could not be reached


@dataclass(frozen=True)
class _Faults:
    latency: float = 0.0  # seconds
    jitter: float = 0.0  # seconds
    bandwidth: int | None = None  # bytes per second and direction
    blackhole: bool = False

    def delay(self) -> float:
        if not self.latency and not self.jitter:
            return 0.0
        return max(0.0, self.latency + random.uniform(-self.jitter, self.jitter))


def parse_address(upstream: str) -> tuple[str, int]:
    """host and port of `host:port` or of a URL (redis://, postgresql://, http://...)."""
    if "://" not in upstream:
        host, _, number = upstream.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(number)
    parts = urlsplit(upstream)
    port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    if parts.hostname is None or port is None:
        raise ValueError(f"no host and port in {upstream!r}")
    return parts.hostname, port


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed by the peer: nothing to reset
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Connection:
    """One client connection and its upstream, pumped both ways."""

    def __init__(self, proxy: FaultProxy, client: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def reset(self) -> None:
        for task in self.tasks:
            task.cancel()
        _abort_with_rst(self.client)
        if self.upstream is not None:
            _abort_with_rst(self.upstream)

    async def pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None, up: bool
    ) -> None:
        """Read from one side, deliver to the other after the faults in effect."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        deliver = asyncio.create_task(self._deliver(queue, writer, up))
        self.tasks.append(deliver)
        try:
            while True:
                try:
                    data = await reader.read(CHUNK)
                except (ConnectionError, OSError):
                    data = b""
                if not data:
                    break
                faults = self.proxy._faults
                if faults.blackhole or writer is None:
                    self.proxy._count(dropped=len(data))
                    continue
                await queue.put((time.monotonic() + faults.delay(), data))
        finally:
            await queue.put(None)
            await deliver

    async def _deliver(
        self,
        queue: asyncio.Queue[tuple[float, bytes] | None],
        writer: asyncio.StreamWriter | None,
        up: bool,
    ) -> None:
        while (item := await queue.get()) is not None:
            due, data = item
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # the injected latency itself
            if writer is None:
                continue
            try:
                await self._write(writer, data, "bytes_up" if up else "bytes_down")
            except (ConnectionError, OSError):
                return
        if writer is not None and writer.can_write_eof() and not writer.is_closing():
            with contextlib.suppress(OSError):  # the other side is gone already
                writer.write_eof()

    async def _write(self, writer: asyncio.StreamWriter, data: bytes, counter: str) -> None:
        # Counted just before it is handed to the socket: the peer may read it (and a test
        # read the stats) before this thread runs again after write().
        rate = self.proxy._faults.bandwidth
        if rate is None:
            self.proxy._count(**{counter: len(data)})
            writer.write(data)
            await writer.drain()
            return
        step = max(1, rate // 20)
        for start in range(0, len(data), step):
            piece = data[start : start + step]
            self.proxy._count(**{counter: len(piece)})
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(len(piece) / rate)  # the bandwidth limit itself


class FaultProxy:
    """A TCP proxy on 127.0.0.1 to `upstream` (host:port or a URL), with faults."""

    def __init__(self, upstream: str, *, name: str = "proxy") -> None:
        self.upstream = parse_address(upstream)
        self.name = name
        self.host = "127.0.0.1"
        self.port = 0
        self._faults = _Faults()
        self._stats = ProxyStats()
        self._connections: set[_Connection] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        # Held for the proxy's whole life, so that down() can never lose the port.
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- lifetime ---------------------------------------------------------------------

    def start(self) -> Self:
        """Start the proxy's loop thread and listen; returns the proxy."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"apex-fault-proxy-{self.name}", daemon=True
        )
        self._thread.start()
        self._call(self._listen)
        return self

    def stop(self) -> None:
        """Close every connection and the listener, and end the thread."""
        if self._loop is None or self._thread is None:
            return
        self._call(self._shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            raise RuntimeError(f"fault proxy {self.name} did not stop within 10 s")
        self._loop.close()
        self._loop, self._thread = None, None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def url_for(self, url: str) -> str:
        """`url` (redis://, postgresql://, http://..., or host:port) with its host and
        port replaced by the proxy's; user, password, path and query are kept."""
        if "://" not in url:
            return self.address
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{self.address}" if userinfo else self.address
        return urlunsplit(parts._replace(netloc=netloc))

    # -- faults -----------------------------------------------------------------------

    def latency(self, ms: float, jitter_ms: float = 0.0) -> None:
        """Deliver every chunk, in either direction, `ms` (+- `jitter_ms`) later."""
        self._set(latency=ms / 1000, jitter=jitter_ms / 1000)

    def bandwidth(self, bytes_per_s: int | None) -> None:
        """At most `bytes_per_s` per direction and connection (None: unlimited)."""
        if bytes_per_s is not None and bytes_per_s <= 0:
            raise ValueError("bandwidth must be positive (use blackhole() for none)")
        self._set(bandwidth=bytes_per_s)

    def blackhole(self) -> None:
        """Accept connections and read from them, but never forward nor answer: the
        client waits until its own timeout. Live connections go silent too."""
        self._set(blackhole=True)

    def reset_peers(self) -> None:
        """Reset (RST) every live connection, client and upstream side; new ones work."""
        self._call(self._reset_all)

    def down(self) -> None:
        """Stop listening (new connections are refused) and reset the live ones."""
        self._call(self._down)

    def up(self) -> None:
        """Listen again on the same port."""
        self._call(self._listen)

    def clear(self) -> None:
        """No faults at all: no latency, no limit, no blackhole, listening."""
        self._set(latency=0.0, jitter=0.0, bandwidth=None, blackhole=False)
        self.up()

    @property
    def faults(self) -> dict[str, Any]:
        """The faults in effect (latency_ms, jitter_ms, bandwidth, blackhole, down)."""
        faults = self._faults
        return {
            "latency_ms": faults.latency * 1000,
            "jitter_ms": faults.jitter * 1000,
            "bandwidth": faults.bandwidth,
            "blackhole": faults.blackhole,
            "down": self._server is None,
        }

    @property
    def stats(self) -> ProxyStats:
        with self._lock:
            return replace(self._stats, active=len(self._connections))

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = ProxyStats()

    # -- inside the loop --------------------------------------------------------------

    def _set(self, **changes: Any) -> None:
        self._faults = replace(self._faults, **changes)

    def _count(self, **deltas: int) -> None:
        with self._lock:
            values = {k: getattr(self._stats, k) + v for k, v in deltas.items()}
            self._stats = replace(self._stats, **values)

    def _call(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        if self._loop is None:
            raise RuntimeError(f"fault proxy {self.name} is not started")
        return asyncio.run_coroutine_threadsafe(make(), self._loop).result(timeout=30)

    async def _listen(self) -> None:
        if self._server is not None:
            return
        if self._sock is None:
            self._sock = _held_socket(self.host)
            self.port = int(self._sock.getsockname()[1])
        self._sock.listen(1024)
        # asyncio closes the socket it serves: it gets a duplicate of the held one.
        self._server = await asyncio.start_server(self._accept, sock=self._sock.dup())

    async def _down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._sock is not None:
            # Stop listening but stay bound: connections are refused, and no other
            # socket can take the port before up() (closing it could lose the port).
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RD)
        await self._reset_all()

    async def _reset_all(self) -> None:
        connections = list(self._connections)
        for connection in connections:
            connection.reset()
        self._count(resets=len(connections))

    async def _shutdown(self) -> None:
        await self._down()
        # Let the connection handlers (and their cancelled pumps) end before the loop.
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(self, writer)
        self._connections.add(connection)
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)
        self._count(connections=1)
        try:
            up_reader: asyncio.StreamReader | None = None
            if not self._faults.blackhole:
                try:
                    up_reader, connection.upstream = await asyncio.open_connection(*self.upstream)
                except OSError:
                    self._count(upstream_errors=1)
                    _abort_with_rst(writer)
                    return
            pumps = [asyncio.create_task(connection.pump(reader, connection.upstream, True))]
            if up_reader is not None:
                pumps.append(asyncio.create_task(connection.pump(up_reader, writer, False)))
            connection.tasks.extend(pumps)
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self._connections.discard(connection)
            if not writer.is_closing():
                writer.close()
            if connection.upstream is not None:
                connection.upstream.close()


__all__ = ["FaultProxy", "ProxyStats", "parse_address"]


def _held_socket(host: str, attempts: int = 5) -> socket.socket:
    """A socket bound to an explicit free port of `host`.

    Bound by number (not port 0) and without SO_REUSEADDR, it keeps the port through
    shutdown()/listen() cycles and no other socket can bind it meanwhile.
    """
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        # IPPROTO_TCP so asyncio sets TCP_NODELAY on accepted connections (as
        # _processes.listening_socket): the relay writes in pieces and would otherwise wait
        # out the peer's delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.bind((host, port))
        except OSError:  # taken between the probe and the bind: another port
            sock.close()
            continue
        return sock
    raise OSError(f"no free port on {host} after {attempts} attempts")
