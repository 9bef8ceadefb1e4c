"""A new platform service is one entry in apex.topology plus its module: the kit wires it
at every level with no change of its own.

The toy service (toy_service.py, beside this file) needs Redis and calls auth; registered
for the test and unregistered after, it is reached through the same `Platform` the test
packages use: in process (L2) and as a process (L3).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from apex import topology
from apex_testkit import Platform
from apex_testkit._sut import InProcessPlatform, ProcessPlatform, ServiceProcess
from apex_testkit._sut.spares import SpareTemplate
from apex_testkit._sut.wiring import service_env

HERE = Path(__file__).parent


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The toy service, registered in the platform's topology for this test."""
    entry = topology.Service(
        "toy", module="toy_service", servers=("redis",), calls={"auth": "TOY_AUTH_URL"}
    )
    # Its processes (L3) import it from here, as they import apex from site-packages.
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    topology.register(entry)
    yield entry.name
    topology.unregister(entry.name)


def _hits(namespace) -> int:
    client = redis.Redis.from_url(namespace.url)
    try:
        return int(client.get(f"{namespace.prefix}toy:hits") or 0)
    finally:
        client.close()


async def _wiring(url: str) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        response = await http.get("/wiring")
    response.raise_for_status()
    return dict(response.json())


async def _exercise(platform: Platform, toy: str, redis_namespace) -> None:
    """What a test package would do with the new service, whatever the level."""
    async with platform.client(toy) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/wiring")).status_code == 200
    async with platform.serve(toy) as url:
        assert url.startswith("http://127.0.0.1:")  # protocol http: not a ws:// URL
        assert (await _wiring(url))["auth"] == "ok", "the auth it calls was started and named"
    async with platform.start(toy) as mine:
        assert (await _wiring(mine.url))["auth"] == "ok"
        await mine.stop()
        with pytest.raises(httpx.ConnectError):
            await _wiring(mine.url)
    # Every instance counted in the worker's own Redis, under the worker's prefix.
    assert _hits(redis_namespace) == 3


async def test_l2_wires_a_registered_service_in_process(toy, apex_worker, redis_namespace):
    platform = InProcessPlatform(apex_worker)
    try:
        platform.reset()
        await _exercise(platform, toy, redis_namespace)
    finally:
        # Its apps' loop serves apex.auth (the toy calls it) until closed: left open, the
        # serving task was destroyed pending when the worker's process ended.
        await asyncio.to_thread(platform.close)


async def test_l2_serves_a_service_without_the_reset_hook_afresh_on_its_previous_address(
    toy, apex_worker, redis_namespace
):
    """A service the kit cannot keep running (no reset hook) is served afresh for each
    block, on the address its previous instance of those settings had: a service calling
    it keeps the same settings (its URL), so the worker reuses the caller's app; between
    instances the address refuses connections. Two at once get two addresses; a started
    instance (the test may stop it) gets one of its own."""
    platform = InProcessPlatform(apex_worker)
    try:
        platform.reset()
        async with platform.serve(toy) as first:
            assert (await _wiring(first))["auth"] == "ok"
        # Between instances the address refuses a caller that outlived the instance (the
        # payments fake's next webhook) at once, not held in a backlog nobody accepts.
        with pytest.raises(httpx.ConnectError):
            await _wiring(first)
        async with platform.serve(toy) as again, platform.serve(toy) as beside:
            assert again == first
            assert beside != first
            assert (await _wiring(again))["auth"] == "ok"
            assert (await _wiring(beside))["auth"] == "ok"
        async with platform.start(toy) as mine:
            assert mine.url not in (first, beside)
        assert _hits(redis_namespace) == 3  # each served instance was a live one
    finally:
        await asyncio.to_thread(platform.close)


async def test_l3_runs_a_registered_service_as_a_process(toy, apex_worker, redis_namespace):
    platform = ProcessPlatform(apex_worker)
    try:
        platform.reset()
        await _exercise(platform, toy, redis_namespace)
        process = platform.instance(toy)
        assert process.module == "toy_service"
        assert process.env["TOY_AUTH_URL"] == platform.instance("auth").url
        async with platform.start(toy) as mine:
            await mine.kill()
            with pytest.raises(httpx.ConnectError):
                await _wiring(mine.url)
    finally:
        platform.close()


def test_l3_a_service_that_is_a_plain_module_starts_in_a_warm_spare(toy, apex_worker):
    # toy_service is a module, not a package: it has no __main__ to import ahead.
    env = service_env(apex_worker, toy) | {"TOY_AUTH_URL": "http://127.0.0.1:9"}
    template = SpareTemplate(apex_worker.run, "toy_service", "selftest-toy-template")
    process = ServiceProcess(apex_worker.run, "toy_service", env, "selftest-toy")
    try:
        url = process.start(timeout=30, spare=template.fork("selftest-toy-spare"))
        assert process.warm
        assert httpx.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}
    finally:
        process.stop()
        template.close()


def test_registration_is_undone_after_the_test():
    assert "toy" not in topology.SERVICES


def test_a_third_party_with_no_fake_is_named(apex_worker):
    crm = topology.ThirdParty("crm", {"base_url": "TOY_CRM_URL"}, url="base_url")
    topology.register(topology.Service("toy_billing", module="toy_service", third_parties=(crm,)))
    try:
        with pytest.raises(LookupError, match=r"third party 'crm'.* no fake of it"):
            service_env(apex_worker, "toy_billing")
    finally:
        topology.unregister("toy_billing")
