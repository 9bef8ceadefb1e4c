"""apex.stack reads apex.topology: a registered service is started with no stack change."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator

import pytest

from apex import topology
from apex.stack import plan
from apex.stack.__main__ import build_parser
from apex.stack.manifest import render_manifest
from apex.stack.supervisor import StackError
from apex.topology import Service

TOY = Service(
    "toy",
    module="toy_service",
    protocol="ws",
    servers=("redis",),
    calls={"auth": "APEX_TOY_AUTH_URL", "gateway": "APEX_TOY_GATEWAY_URL"},
)


@pytest.fixture(name="toy")
def _toy() -> Iterator[Service]:
    topology.register(TOY)
    try:
        yield TOY
    finally:
        topology.unregister(TOY.name)


def test_the_plan_is_the_topology_in_start_order() -> None:
    assert [s.name for s in plan.services()] == list(topology.SERVICES)
    assert [s.name for s in plan.services()][:2] == ["auth", "gateway"]


def test_a_registered_service_is_started_last_with_its_own_port_option(toy: Service) -> None:
    assert plan.services()[-1] is toy
    args = build_parser().parse_args(["--manifest", "m.toml", "--toy-port", "4321"])
    assert args.port_of_toy == 4321
    assert args.port_of_auth == 0


def test_a_child_learns_where_the_services_it_calls_are(toy: Service) -> None:
    started = {"auth": "http://127.0.0.1:1001", "gateway": "ws://127.0.0.1:1002"}
    env = plan.child_env(toy, started, {"APEX_REDIS_URL": "redis://r", "APEX_TOY_AUTH_URL": "x"})
    assert env == {
        "APEX_REDIS_URL": "redis://r",
        "APEX_TOY_AUTH_URL": "http://127.0.0.1:1001",
        "APEX_TOY_GATEWAY_URL": "ws://127.0.0.1:1002",
    }


def test_the_gateway_is_told_where_auth_is() -> None:
    env = plan.child_env(topology.service("gateway"), {"auth": "http://127.0.0.1:1001"}, {})
    assert env == {"APEX_AUTH_URL": "http://127.0.0.1:1001"}
    assert plan.child_env(topology.service("auth"), {}, {"A": "1"}) == {"A": "1"}


def test_a_callee_that_did_not_start_is_an_error(toy: Service) -> None:
    with pytest.raises(StackError, match="toy calls gateway, which did not start first"):
        plan.child_env(toy, {"auth": "http://127.0.0.1:1001"}, {})


def test_the_manifest_url_has_the_scheme_of_the_protocol(toy: Service) -> None:
    urls = {
        service.name: plan.public_url(service, f"http://127.0.0.1:{2000 + i}")
        for i, service in enumerate(plan.services())
    }
    manifest = tomllib.loads(render_manifest(urls, "tok"))
    assert manifest["services"] == {
        "auth": {"url": "http://127.0.0.1:2000"},
        "gateway": {"url": "ws://127.0.0.1:2001"},
        "data": {"url": "http://127.0.0.1:2002"},
        "agents": {"url": "http://127.0.0.1:2003"},
        "billing": {"url": "http://127.0.0.1:2004"},
        "toy": {"url": "ws://127.0.0.1:2005"},
    }


def test_public_url_needs_an_http_url() -> None:
    with pytest.raises(ValueError, match="not an http:// URL"):
        plan.public_url(topology.service("auth"), "ws://127.0.0.1:1")
