"""001#22 health check integration and 001#90 health check propagation.

The rules under test (CONTRACT4, HTTP on the same port): `/healthz` says ok with the
instance's connection count and its dependencies' checks, 503 when Redis is down, and
needs no credentials (readiness probes); `/metrics` counts connections and traffic;
`/instances` lists the live instances registered in Redis, and forgets one within
APEX_WS_INSTANCE_TTL once it stops heart-beating (killed, or cut off from Redis). Both
list internals (instance URLs, traffic): they answer only the platform's admin token.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from apex_testkit import FaultProxy, RedisNamespace, eventually
from ws_tests.client import Connect
from ws_tests.gateways import GatewayHandle, Gateways, has_metric, http_url, metric
from ws_tests.users import MakeUser, WsUser

INTEGRATION = pytest.mark.bvj(
    segment="platform", goal="Operators see each gateway's health, load and traffic",
    mrr=6000, scenario="001#22",
)  # fmt: skip
PROPAGATION = pytest.mark.bvj(
    segment="platform", goal="A sick or dead gateway is seen by the fleet and the balancer",
    mrr=6000, scenario="001#90",
)  # fmt: skip

METRICS = (
    "apex_gateway_connections",
    "apex_gateway_messages_in_total",
    "apex_gateway_messages_out_total",
    "apex_gateway_reaped_total",
    "apex_gateway_rate_limited_total",
    "apex_gateway_slow_consumers_total",
    "apex_gateway_breaker_state",
)
TTL = 1.5


async def _count_becomes(gateway: GatewayHandle, expected: int) -> None:
    async def reached() -> bool:
        return await gateway.connections() == expected

    await eventually(reached, timeout=5, message=f"healthz connections == {expected}")


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@INTEGRATION
async def test_healthz_reports_ok_instance_connections_and_checks(
    gateway_http: httpx.AsyncClient,
) -> None:
    response = await gateway_http.get("/healthz")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert isinstance(body["instance"], str)
    assert body["instance"]
    assert isinstance(body["connections"], int)
    assert body["connections"] >= 0
    assert body["checks"]["redis"] == "ok"
    assert body["checks"]["auth"] == "ok"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@INTEGRATION
async def test_metrics_expose_every_gateway_series_with_closed_breakers(
    gateway_http: httpx.AsyncClient,
) -> None:
    response = await gateway_http.get("/metrics")

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in METRICS:
        assert has_metric(text, name), f"{name} missing from /metrics"
    for dependency in ("auth", "postgres"):
        assert metric(text, "apex_gateway_breaker_state", dependency=dependency) == 0


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@INTEGRATION
async def test_healthz_needs_no_credentials(gateway_url: str) -> None:
    async with httpx.AsyncClient(base_url=http_url(gateway_url), timeout=30) as bare:
        response = await bare.get("/healthz")

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ok"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@INTEGRATION
@pytest.mark.parametrize("path", ["/metrics", "/instances"])
@pytest.mark.parametrize(
    ("credentials", "code", "challenge"),
    [
        ("none", "missing_token", 'Bearer realm="apex"'),
        ("user", "invalid_token", 'Bearer realm="apex", error="invalid_token"'),
        ("wrong", "invalid_token", 'Bearer realm="apex", error="invalid_token"'),
    ],
)
async def test_operator_endpoints_answer_only_the_admin_token(
    gateway_url: str,
    ws_user: WsUser,
    path: str,
    credentials: str,
    code: str,
    challenge: str,
) -> None:
    """Without the admin token (none, a user's access token, a wrong one): 401, and the
    body names no instance URL and no series (RFC 6750: no error code without credentials)."""
    headers = {
        "none": {},
        "user": {"Authorization": f"Bearer {ws_user.token}"},
        "wrong": {"Authorization": "Bearer not-the-admin-token"},
    }[credentials]
    async with httpx.AsyncClient(base_url=http_url(gateway_url), timeout=30) as bare:
        response = await bare.get(path, headers=headers)

    assert response.status_code == 401, response.text
    assert response.json()["error"] == code
    assert response.headers["www-authenticate"] == challenge
    assert "ws://" not in response.text
    assert "apex_gateway" not in response.text


@pytest.mark.L2
@pytest.mark.L3
@INTEGRATION
async def test_connection_counts_follow_opens_and_closes(
    gateways: Gateways, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    gateway = await gateways.start()
    first, second = await make_ws_user(), await make_ws_user()
    assert await gateway.connections() == 0

    clients = [await ws_open(gateway.url, u.token) for u in (first, first, second)]
    await _count_becomes(gateway, 3)
    assert metric(await gateway.metrics(), "apex_gateway_connections") == 3

    await clients[0].close()
    await clients[2].close()
    await _count_becomes(gateway, 1)
    assert metric(await gateway.metrics(), "apex_gateway_connections") == 1


@pytest.mark.L2
@pytest.mark.L3
@INTEGRATION
async def test_message_counters_move_with_traffic(
    gateways: Gateways, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    gateway = await gateways.start()
    sender, receiver = await make_ws_user(), await make_ws_user()
    sending = await ws_open(gateway.url, sender.token)
    receiving = await ws_open(gateway.url, receiver.token)
    before = await gateway.metrics()

    for n in range(10):
        reply = await sending.request("publish", to=f"user:{receiver.user_id}", data={"n": n})
        assert reply["type"] == "ack"
    await receiving.messages(10)

    after = await gateway.metrics()
    messages_in = metric(after, "apex_gateway_messages_in_total") - metric(
        before, "apex_gateway_messages_in_total"
    )
    messages_out = metric(after, "apex_gateway_messages_out_total") - metric(
        before, "apex_gateway_messages_out_total"
    )
    assert messages_in >= 10, after
    assert messages_out >= 10, after  # 10 deliveries (and 10 acks, if they count)


@pytest.mark.L3
@pytest.mark.L4
@PROPAGATION
async def test_instances_lists_the_instance_that_answers(
    gateway_http: httpx.AsyncClient, ws_connect: Connect, ws_user: WsUser
) -> None:
    client = await ws_connect(ws_user.token)
    health = (await gateway_http.get("/healthz")).json()

    async def listed() -> dict[str, dict[str, Any]] | None:
        # (A test run empties Redis between tests: the instance registers again on its
        # next heartbeat, within the TTL.)
        response = await gateway_http.get("/instances")
        assert response.status_code == 200, response.text
        found = {i["id"]: i for i in response.json()["instances"]}
        return found if health["instance"] in found else None

    instances = await eventually(listed, timeout=10, message="the instance is listed")
    assert instances is not None
    assert client.welcome["instance"] in instances
    entry = instances[health["instance"]]
    assert entry["url"].startswith(("ws://", "wss://", "http://", "https://")), entry
    assert isinstance(entry["connections"], int)


def _ids(instances: list[dict[str, Any]]) -> set[str]:
    return {str(i["id"]) for i in instances}


@pytest.mark.L3
@PROPAGATION
async def test_a_killed_instance_leaves_the_list_within_the_ttl(gateways: Gateways) -> None:
    names = [f"gw-{n}-{uuid.uuid4().hex[:6]}" for n in ("a", "b")]
    survivor = await gateways.start(
        APEX_GATEWAY_INSTANCE_ID=names[0], APEX_WS_INSTANCE_TTL=str(TTL)
    )
    doomed = await gateways.start(APEX_GATEWAY_INSTANCE_ID=names[1], APEX_WS_INSTANCE_TTL=str(TTL))
    listed = await survivor.instances()
    assert set(names) <= _ids(listed), listed
    port = doomed.url.rsplit(":", 1)[1]
    assert any(i["id"] == names[1] and port in i["url"] for i in listed), listed

    await doomed.kill()

    async def forgotten() -> bool:
        return names[1] not in _ids(await survivor.instances())

    await eventually(forgotten, timeout=TTL + 3, message="killed instance dropped")
    assert names[0] in _ids(await survivor.instances())


@pytest.mark.L3
@PROPAGATION
async def test_redis_outage_turns_healthz_503_and_recovery_turns_it_back(
    gateways: Gateways,
    fault_proxy: Callable[[str], FaultProxy],
    redis_namespace: RedisNamespace,
) -> None:
    proxy = fault_proxy(redis_namespace.url)
    cut_name = f"gw-cut-{uuid.uuid4().hex[:6]}"
    cut = await gateways.start(
        APEX_REDIS_URL=proxy.url_for(redis_namespace.url),
        APEX_GATEWAY_INSTANCE_ID=cut_name,
        APEX_WS_INSTANCE_TTL=str(TTL),
    )
    observer = await gateways.start(APEX_WS_INSTANCE_TTL=str(TTL))
    assert (await cut.healthz()).status_code == 200
    assert cut_name in _ids(await observer.instances())

    proxy.down()

    async def unhealthy() -> httpx.Response | None:
        response = await cut.healthz()
        return response if response.status_code == 503 else None

    response = await eventually(unhealthy, timeout=10, message="healthz 503 without Redis")
    assert response is not None
    assert response.json()["checks"]["redis"] != "ok", response.text

    async def forgotten() -> bool:
        return cut_name not in _ids(await observer.instances())

    await eventually(forgotten, timeout=TTL + 5, message="the fleet forgets the cut instance")

    proxy.up()

    async def healthy() -> bool:
        response = await cut.healthz()
        return response.status_code == 200 and response.json()["checks"]["redis"] == "ok"

    await eventually(healthy, timeout=15, message="healthz 200 after Redis is back")

    async def listed_again() -> bool:
        return cut_name in _ids(await observer.instances())

    await eventually(listed_again, timeout=TTL + 5, message="the instance registers again")
