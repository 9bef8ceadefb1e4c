"""A gateway's lifecycle on a real Redis: it serves once subscribed, leaves no background
task running after the block exits, normally or cancelled (even when a library swallows
the cancel), and its shutdown is bounded by its settings."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
import uuid
from typing import Any

import pytest
from redis.exceptions import RedisError

from apex.gateway import GatewaySettings, create_server
from apex_testkit import eventually


def _settings(redis_namespace: Any) -> GatewaySettings:
    return GatewaySettings.from_env(
        {
            "APEX_REDIS_URL": redis_namespace.url,
            "APEX_REDIS_PREFIX": f"{redis_namespace.prefix}gw-{uuid.uuid4().hex[:8]}:",
            "APEX_WS_INSTANCE_TTL": "0.6",  # a heartbeat every 0.2 s
        }
    )


def _others() -> set[asyncio.Task[Any]]:
    """The tasks of this loop that are still running, besides the test's own."""
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}


async def _health(url: str) -> dict[str, Any]:
    def get() -> dict[str, Any]:
        with urllib.request.urlopen(f"{url.replace('ws://', 'http://')}/healthz") as response:  # noqa: S310
            body: dict[str, Any] = json.loads(response.read())
            return body

    return await asyncio.to_thread(get)


async def test_serving_then_leaving_the_block_stops_every_task(redis_namespace: Any) -> None:
    before = _others()
    gateway = create_server(_settings(redis_namespace))
    async with gateway.serving(port=0) as server:
        assert (await _health(server.url))["status"] == "ok"
        assert _others() - before  # pub/sub, heartbeat, the server's own
    assert _others() <= before


async def test_a_cancelled_gateway_drains_and_stops_every_task(redis_namespace: Any) -> None:
    before = _others()
    gateway = create_server(_settings(redis_namespace))
    served: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def serve_forever() -> None:
        async with gateway.serving(port=0) as server:
            served.set_result(server.url)
            await asyncio.Event().wait()

    task = asyncio.create_task(serve_forever())
    url = await asyncio.wait_for(served, timeout=30)

    async def heartbeats_ran() -> bool:
        # The heartbeat renews the registration: proof it is running before the cancel.
        return bool(await gateway.registry.instances())

    await eventually(heartbeats_ran, timeout=10, message="a heartbeat")
    assert (await _health(url))["status"] == "ok"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gateway.draining
    assert _others() <= before


async def test_a_heartbeat_whose_redis_call_swallows_the_cancel_still_stops(
    redis_namespace: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client library that turns a cancellation into its own error (redis-py did, on a
    timeout racing the cancel) must not keep a background loop alive past shutdown."""
    before = _others()
    gateway = create_server(_settings(redis_namespace))
    stuck = asyncio.Event()

    async def swallowing_heartbeat(connections: int) -> None:
        stuck.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RedisError("connection closed by a cancel") from None

    async with gateway.serving(port=0):
        monkeypatch.setattr(gateway.registry, "heartbeat", swallowing_heartbeat)
        await asyncio.wait_for(stuck.wait(), timeout=10)
        await asyncio.wait_for(gateway.shutdown(), timeout=30)
    assert _others() <= before


async def test_shutdown_gives_up_on_a_task_that_ignores_its_cancel_after_the_grace(
    redis_namespace: Any,
) -> None:
    """The shutdown is bounded: a task that outlives its cancellation by more than
    APEX_WS_SHUTDOWN_GRACE is left behind (and logged), the shutdown returns."""
    settings = GatewaySettings.from_env(
        {
            "APEX_REDIS_URL": redis_namespace.url,
            "APEX_REDIS_PREFIX": f"{redis_namespace.prefix}gw-{uuid.uuid4().hex[:8]}:",
            "APEX_WS_SHUTDOWN_GRACE": "0.5",
        }
    )
    gateway = create_server(settings)
    release, started = asyncio.Event(), asyncio.Event()

    async def stubborn() -> None:
        started.set()
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    async with gateway.serving(port=0):
        task = gateway.spawn(stubborn())
        await started.wait()  # a task cancelled before it runs never runs at all
        await asyncio.wait_for(gateway.shutdown(), timeout=30)
        assert not task.done()
    release.set()
    await task
