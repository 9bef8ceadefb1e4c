"""001#4 the auth cascade as the gateway sees it: a session ended in auth closes its
WebSockets (4003, on every instance, within 1 s); a permission change reaches every
connection of the user as a `permissions_changed` frame.

Both travel as auth events on `<prefix>auth:events` (CONTRACT3/CONTRACT4): the tests
cause them through auth's own API, so they break when either side stops speaking the
other's language. A revocation has a second path, the gateway's periodic session sweep
(every APEX_WS_SESSION_SWEEP seconds it checks that each socket's session still exists):
each path is tested alone, the sweep made slow for the event, the event lost for the sweep.
These are correctness tests: they wait for a close or a frame with a generous deadline.
How soon it comes (the contract's 1 s) is measured by test_bench's revocation benchmark.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from auth_tests.client import AuthAdmin, KeyUser, Tokens, error_of, login, me_status

from apex_testkit import Platform, RedisNamespace
from ws_tests.client import Connect, HandshakeRefused, WsClient
from ws_tests.gateways import Gateways, Serve
from ws_tests.users import MakeUser

CASCADE = pytest.mark.bvj(
    segment="enterprise", goal="Revocations and permission changes reach open sockets at once",
    mrr=10000, scenario="001#4",
)  # fmt: skip
pytestmark = [CASCADE]

# How long a test waits for a close or a frame: a deadline for a condition, not a latency
# bound (that is the benchmark's).
DEADLINE = 15.0
# The sweep of the gateways of the tests that prove the event path: once an hour, 240 times
# DEADLINE, so within a test's deadline only the auth event can have closed a socket.
SLOW_SWEEP = {"APEX_WS_SESSION_SWEEP": "3600"}


@pytest.fixture
async def second_gateway(clean_platform: Platform, gateway_url: str) -> AsyncIterator[str]:
    """URL of another gateway instance on the same servers (instance 1)."""
    async with clean_platform.serve("gateway", instance=1) as url:
        assert url != gateway_url
        yield url


@pytest.fixture
async def event_only_gateways(serve_gateway: Serve) -> tuple[str, str]:
    """Two gateway instances whose session sweep is too slow to close a socket in a test
    (SLOW_SWEEP): a socket they close in time was closed by the revocation event."""
    first = await serve_gateway(instance=0, **SLOW_SWEEP)
    second = await serve_gateway(instance=1, **SLOW_SWEEP)
    assert first != second
    return first, second


@dataclass(frozen=True)
class TwoSessions:
    """One user signed in twice (two devices): the session a test ends, and the other."""

    key_user: KeyUser
    ending: Tokens
    staying: Tokens


@pytest.fixture
async def two_sessions(ws_auth_client: httpx.AsyncClient, ws_auth_admin: AuthAdmin) -> TwoSessions:
    """A new user with two sessions of one API key."""
    key_user = await ws_auth_admin.key_user()
    ending = await login(ws_auth_client, key_user.api_key)
    return TwoSessions(key_user, ending, await login(ws_auth_client, key_user.api_key))


async def _ended_in_auth(client: httpx.AsyncClient, ended: Tokens) -> None:
    """auth agrees the session has ended: its access token and its refresh token are both
    refused."""
    assert await me_status(client, ended.access) == (401, "session_revoked")
    refreshed = await client.post("/auth/refresh", json={"refresh_token": ended.refresh})
    assert refreshed.status_code == 401, refreshed.text
    assert error_of(refreshed) == "invalid_refresh_token"


async def _session_gone(client: httpx.AsyncClient, ended: Tokens, staying: Tokens) -> None:
    """auth agrees the socket's session has ended (`_ended_in_auth`), and the user's other
    session no longer lists it (while that one lives on)."""
    await _ended_in_auth(client, ended)
    listed = await client.get("/sessions", headers=staying.bearer)
    assert listed.status_code == 200, listed.text
    assert [s["session_id"] for s in listed.json()["sessions"]] == [staying.session_id]


async def _closed_with(client: WsClient, code: int, reason: str) -> None:
    assert await client.closed(timeout=DEADLINE) == (code, reason)


async def _alive(client: WsClient) -> None:
    assert (await client.request("ping"))["type"] == "pong"


@pytest.mark.L2
@pytest.mark.L3
async def test_logout_closes_the_sessions_sockets_on_every_instance_with_4003(
    ws_open: Connect,
    event_only_gateways: tuple[str, str],
    ws_auth_client: httpx.AsyncClient,
    two_sessions: TwoSessions,
) -> None:
    """The event reaches every instance (their sweep is too slow to be what closes)."""
    first, second = event_only_gateways
    ending, staying = two_sessions.ending, two_sessions.staying
    on_a = await ws_open(first, ending.access)
    on_b = await ws_open(second, ending.access)
    other_tab_a = await ws_open(first, staying.access)
    other_tab_b = await ws_open(second, staying.access)
    assert on_a.welcome["instance"] != on_b.welcome["instance"]

    logout = await ws_auth_client.post("/auth/logout", headers=ending.bearer)
    assert logout.status_code == 204, logout.text

    await _closed_with(on_a, 4003, "session revoked")
    await _closed_with(on_b, 4003, "session revoked")
    # Only that session: the user's other session keeps its sockets on both instances.
    await _alive(other_tab_a)
    await _alive(other_tab_b)
    await _session_gone(ws_auth_client, ending, staying)
    with pytest.raises(HandshakeRefused) as refused:
        await ws_open(second, ending.access)
    assert (refused.value.status, refused.value.body["error"]) == (401, "session_revoked")


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_deleting_a_session_from_another_device_closes_its_socket(
    ws_connect: Connect, ws_auth_client: httpx.AsyncClient, two_sessions: TwoSessions
) -> None:
    """The run's gateway as deployed (L4 too): the event or the sweep, whichever comes first."""
    phone, laptop = two_sessions.ending, two_sessions.staying
    laptop_ws, phone_ws = await ws_connect(laptop.access), await ws_connect(phone.access)

    deleted = await ws_auth_client.delete(f"/sessions/{phone.session_id}", headers=laptop.bearer)
    assert deleted.status_code == 204, deleted.text

    await _closed_with(phone_ws, 4003, "session revoked")
    await _alive(laptop_ws)
    await _session_gone(ws_auth_client, phone, laptop)


@pytest.mark.L2
@pytest.mark.L3
async def test_revoking_an_api_key_closes_the_sockets_of_all_its_sessions(
    ws_open: Connect,
    event_only_gateways: tuple[str, str],
    ws_auth_client: httpx.AsyncClient,
    ws_auth_admin: AuthAdmin,
) -> None:
    """By the event, on both instances (their sweep is too slow to be what closes)."""
    first, second = event_only_gateways
    key_user = await ws_auth_admin.key_user()
    bystander = await ws_auth_admin.key_user()
    sessions = [await login(ws_auth_client, key_user.api_key) for _ in range(2)]
    sockets = [
        await ws_open(first, sessions[0].access),
        await ws_open(second, sessions[1].access),
    ]
    bystander_ws = await ws_open(first, (await login(ws_auth_client, bystander.api_key)).access)

    await ws_auth_admin.revoke_api_key(key_user.key_id)

    for socket in sockets:
        await _closed_with(socket, 4003, "session revoked")
    await _alive(bystander_ws)
    for session in sessions:
        await _ended_in_auth(ws_auth_client, session)


@pytest.mark.L2
@pytest.mark.L3
async def test_the_revocation_event_alone_closes_the_sessions_sockets(
    gateways: Gateways,
    ws_open: Connect,
    ws_auth_client: httpx.AsyncClient,
    two_sessions: TwoSessions,
) -> None:
    """The sweep runs once an hour here (SLOW_SWEEP), the test waits DEADLINE: only the
    event can have closed the socket."""
    gateway = await gateways.start(**SLOW_SWEEP)
    ending, staying = two_sessions.ending, two_sessions.staying
    ending_ws, staying_ws = (
        await ws_open(gateway.url, ending.access),
        await ws_open(gateway.url, staying.access),
    )

    logout = await ws_auth_client.post("/auth/logout", headers=ending.bearer)
    assert logout.status_code == 204, logout.text

    await _closed_with(ending_ws, 4003, "session revoked")
    await _alive(staying_ws)
    await _session_gone(ws_auth_client, ending, staying)


@pytest.mark.L2
@pytest.mark.L3
async def test_the_session_sweep_alone_closes_a_socket_whose_revocation_event_was_lost(
    gateways: Gateways,
    ws_open: Connect,
    ws_auth_client: httpx.AsyncClient,
    two_sessions: TwoSessions,
    redis_namespace: RedisNamespace,
) -> None:
    """The session ends with no event (as when the gateway missed it): the sweep finds it."""
    gateway = await gateways.start(APEX_WS_SESSION_SWEEP="0.2")
    ending, staying = two_sessions.ending, two_sessions.staying
    ending_ws, staying_ws = (
        await ws_open(gateway.url, ending.access),
        await ws_open(gateway.url, staying.access),
    )

    redis = redis_namespace.client()
    try:
        assert redis.delete(f"{redis_namespace.prefix}sess:{ending.session_id}") == 1
    finally:
        redis.close()

    assert await ending_ws.closed(timeout=DEADLINE) == (4003, "session revoked")
    await _alive(staying_ws)
    await _session_gone(ws_auth_client, ending, staying)


# --- permissions.changed --------------------------------------------------------------------


async def _grant(ws_auth_admin: AuthAdmin, user_id: str, permission: str, effect: str) -> None:
    response = await ws_auth_admin.client.put(
        f"/admin/users/{user_id}/grants/{permission}",
        json={"effect": effect},
        headers=ws_auth_admin.headers,
    )
    assert response.status_code == 200, response.text  # CONTRACT3 notes: PUT grant -> 200


@pytest.mark.L2
@pytest.mark.L3
async def test_permission_change_in_auth_reaches_every_connection_of_the_user(
    ws_connect: Connect,
    second_gateway: str,
    ws_auth_admin: AuthAdmin,
    make_ws_user: MakeUser,
) -> None:
    user, other = await make_ws_user(), await make_ws_user()
    tabs = [await ws_connect(user.token), await ws_connect(user.token, base_url=second_gateway)]
    other_ws = await ws_connect(other.token)

    await _grant(ws_auth_admin, user.user_id, "reports:export", "allow")

    for tab in tabs:
        frame = await tab.expect("permissions_changed", timeout=DEADLINE)
        assert "reports:export" in frame["permissions"], frame
        assert frame["permissions"] == sorted(frame["permissions"])

    await _grant(ws_auth_admin, user.user_id, "reports:export", "deny")

    for tab in tabs:
        frame = await tab.expect("permissions_changed", timeout=DEADLINE)
        assert "reports:export" not in frame["permissions"], frame
    # Nobody else hears of it: by the time the other user's ping is answered the events
    # have passed their instance.
    await _alive(other_ws)
    assert not [f for f in other_ws.inbox if f.get("type") == "permissions_changed"]


@pytest.mark.L2
@pytest.mark.L3
async def test_permissions_changed_event_makes_the_gateway_fetch_the_users_permissions(
    ws_connect: Connect,
    ws_auth_client: httpx.AsyncClient,
    redis_namespace: RedisNamespace,
    make_ws_user: MakeUser,
) -> None:
    """The event as auth publishes it (CONTRACT3): the gateway asks auth for the list."""
    first, second, bystander = [await make_ws_user() for _ in range(3)]
    first_ws, second_ws = await ws_connect(first.token), await ws_connect(second.token)
    bystander_ws = await ws_connect(bystander.token)
    expected = await ws_auth_client.get("/me/permissions", headers=first.tokens.bearer)
    assert expected.status_code == 200, expected.text

    redis = redis_namespace.client()
    try:
        event = {"type": "permissions.changed", "user_ids": [first.user_id, second.user_id]}
        redis.publish(f"{redis_namespace.prefix}auth:events", json.dumps(event))
    finally:
        redis.close()

    frame = await first_ws.expect("permissions_changed", timeout=DEADLINE)
    assert frame["permissions"] == expected.json()["permissions"]
    await second_ws.expect("permissions_changed", timeout=DEADLINE)
    await _alive(bystander_ws)
    assert not [f for f in bystander_ws.inbox if f.get("type") == "permissions_changed"]
