"""A gateway's lifecycle on a real Redis: it serves once subscribed, and leaves no
background task running after the block exits, normally or cancelled."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from typing import Any

import pytest

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
