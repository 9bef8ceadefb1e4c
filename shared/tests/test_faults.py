"""The TCP fault proxy, against the real Redis and PostgreSQL of the run."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import asyncpg
import httpx
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from apex_testkit._faults import parse_address
from apex_testkit._sut import ProcessPlatform
from apex_testkit._waiting import wait_for


def _raw_redis(url: str, timeout: float = 5.0) -> redis.Connection:
    """One Redis connection, no pool and no retries: a broken one stays broken."""
    host, port = parse_address(url)
    db = int(url.rsplit("/", 1)[1])
    connection = redis.Connection(
        host=host, port=port, db=db, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )
    connection.connect()
    return connection


def _command(connection: redis.Connection, *args: object) -> object:
    connection.send_command(*args)
    return connection.read_response()


def test_url_for_keeps_everything_but_the_address(fault_proxy, redis_namespace):
    proxy = fault_proxy(redis_namespace.url)
    assert proxy.url_for("postgresql://u:p@db.example:5432/name?sslmode=disable") == (
        f"postgresql://u:p@127.0.0.1:{proxy.port}/name?sslmode=disable"
    )
    assert proxy.url_for(redis_namespace.url).endswith(
        f"127.0.0.1:{proxy.port}/" + redis_namespace.url.rsplit("/", 1)[1]
    )
    assert proxy.url_for("localhost:1") == f"127.0.0.1:{proxy.port}"


def test_bytes_pass_through_unchanged(fault_proxy, redis_namespace):
    proxy = fault_proxy(redis_namespace.url)
    client = redis.Redis.from_url(proxy.url_for(redis_namespace.url))
    value = os.urandom(1 << 20)
    key = f"{redis_namespace.prefix}blob"
    client.set(key, value)
    assert client.get(key) == value
    client.close()
    stats = proxy.stats
    assert stats.connections == 1
    assert stats.bytes_up > len(value)
    assert stats.bytes_down > len(value)


def test_latency_delays_at_least_the_configured_time(fault_proxy, redis_namespace):
    proxy = fault_proxy(redis_namespace.url)
    connection = _raw_redis(proxy.url_for(redis_namespace.url))
    assert _command(connection, "PING") == b"PONG"
    proxy.latency(150, jitter_ms=20)
    started = time.monotonic()
    assert _command(connection, "PING") == b"PONG"
    # Each way at least 130 ms: the round trip is no faster than 260 ms.
    assert time.monotonic() - started >= 0.26
    connection.disconnect()


def test_bandwidth_limits_a_transfer(fault_proxy, redis_namespace):
    proxy = fault_proxy(redis_namespace.url)
    connection = _raw_redis(proxy.url_for(redis_namespace.url))
    proxy.bandwidth(50_000)
    started = time.monotonic()
    _command(connection, "SET", f"{redis_namespace.prefix}big", b"x" * 50_000)
    assert time.monotonic() - started >= 0.8  # 50 kB at 50 kB/s
    connection.disconnect()


def test_blackhole_makes_a_client_time_out(fault_proxy, redis_namespace):
    proxy = fault_proxy(redis_namespace.url)
    live = _raw_redis(proxy.url_for(redis_namespace.url), timeout=0.3)
    proxy.blackhole()
    with pytest.raises(redis.TimeoutError):
        _command(live, "PING")
    fresh = redis.Redis.from_url(
        proxy.url_for(redis_namespace.url), socket_timeout=0.3, retry=Retry(NoBackoff(), 0)
    )
    with pytest.raises(redis.TimeoutError):
        fresh.ping()
    assert proxy.stats.dropped > 0, "the proxy read what it never forwarded"
    proxy.clear()
    assert redis.Redis.from_url(proxy.url_for(redis_namespace.url)).ping()


def test_reset_peers_breaks_live_redis_and_postgres_connections(
    fault_proxy, redis_namespace, postgres_database
):
    to_redis = fault_proxy(redis_namespace.url)
    to_postgres = fault_proxy(postgres_database)
    connection = _raw_redis(to_redis.url_for(redis_namespace.url))
    assert _command(connection, "PING") == b"PONG"

    async def postgres() -> None:
        conn = await asyncpg.connect(to_postgres.url_for(postgres_database))
        assert await conn.fetchval("SELECT 1") == 1
        to_postgres.reset_peers()
        with pytest.raises((OSError, asyncpg.exceptions.ConnectionDoesNotExistError)):
            await conn.fetchval("SELECT 1")
        conn.terminate()
        again = await asyncpg.connect(to_postgres.url_for(postgres_database))
        assert await again.fetchval("SELECT 2") == 2
        await again.close()

    to_redis.reset_peers()
    with pytest.raises(redis.ConnectionError):
        _command(connection, "PING")
    assert to_redis.stats.resets == 1
    asyncio.run(postgres())
    assert to_postgres.stats.resets == 1
    assert redis.Redis.from_url(to_redis.url_for(redis_namespace.url)).ping(), "new ones work"


def test_down_refuses_and_up_restores(fault_proxy, redis_namespace):
    proxy = fault_proxy(redis_namespace.url)
    live = _raw_redis(proxy.url_for(redis_namespace.url))
    proxy.down()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    with pytest.raises(redis.ConnectionError):
        _command(live, "PING")
    proxy.up()
    assert redis.Redis.from_url(proxy.url_for(redis_namespace.url)).ping()
    assert proxy.faults["down"] is False


def test_an_l3_instance_reaches_redis_through_its_proxy(apex_worker):
    platform = ProcessPlatform(apex_worker)
    try:
        process = platform.instance("auth", 7, via_proxy=("redis",))
        proxy = platform.proxy("auth", 7, "redis")
        assert process.env["APEX_REDIS_URL"] == proxy.url_for(apex_worker.redis_namespace().url)
        assert httpx.get(f"{process.url}/healthz").status_code == 200
        assert proxy.stats.connections >= 1
        proxy.down()
        wait_for(
            lambda: httpx.get(f"{process.url}/healthz", timeout=5).status_code != 200,
            timeout=20,
            message="healthz sees Redis gone",
        )
        platform.reset()  # no fault survives into the next test
        wait_for(
            lambda: httpx.get(f"{process.url}/healthz", timeout=5).status_code == 200,
            timeout=20,
            message="healthz sees Redis back",
        )
        with pytest.raises(LookupError, match="via_proxy"):
            platform.proxy("auth", 7, "postgres")
    finally:
        platform.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2)


async def test_proxied_gives_a_healthy_instance_behind_a_clear_proxy(apex_worker):
    platform = ProcessPlatform(apex_worker)
    try:
        platform.instance("auth", 8, via_proxy=("redis",))
        platform.proxy("auth", 8, "redis").latency(50)  # left over: proxied clears it
        async with platform.proxied("auth", 8, "redis") as proxied:
            assert proxied.proxy is platform.proxy("auth", 8, "redis")
            assert proxied.process is platform.instance("auth", 8, via_proxy=("redis",))
            assert proxied.proxy.faults["latency_ms"] == 0
            assert (await proxied.client.get("/healthz")).status_code == 200
            proxied.proxy.down()
        assert proxied.proxy.faults["down"] is False  # cleared at the end of the block
        assert proxied.client.is_closed
    finally:
        platform.close()


def test_down_keeps_the_port_for_up(fault_proxy, redis_namespace):
    """While down, connections are refused and no other socket can take the port (which
    would make up() fail or clients reach a stranger); up() listens on the same port."""
    import socket

    proxy = fault_proxy(redis_namespace.url)
    port = proxy.port
    proxy.down()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    for reuse in (False, True):
        thief = socket.socket()
        if reuse:
            thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with thief, pytest.raises(OSError, match="in use"):
            thief.bind(("127.0.0.1", port))
    proxy.up()
    assert proxy.port == port
    client = redis.Redis.from_url(proxy.url_for(redis_namespace.url))
    assert client.ping()
    client.close()
