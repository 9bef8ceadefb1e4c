"""001#7 Token refresh during active requests: mid-flight refresh, queued requests, parallel
refreshes of one token.

What a client sees while it refreshes: requests already sent with the old access token keep
working until that token expires (a refresh rotates the pair, it does not revoke the session);
of several refreshes racing with one refresh token exactly one wins, and the losers count as
reuse, which revokes the whole session (a stolen refresh token must not survive a race).
"""

from __future__ import annotations

import asyncio
from typing import cast

import httpx
import jwt
import pytest

from apex_testkit import Platform, eventually
from auth_tests.access import context_token, introspect
from auth_tests.client import AuthAdmin, KeyUser, Tokens, error_of, login, me, me_status
from auth_tests.events import AuthEvents
from auth_tests.flows import bearer_login, create_password_user

BVJ = pytest.mark.bvj(
    segment="platform", goal="Seamless UX: no failed requests while tokens rotate", mrr=7000,
    scenario="001#7",
)  # fmt: skip
pytestmark = [BVJ]


async def _refresh(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await client.post("/auth/refresh", json={"refresh_token": refresh_token})


@pytest.mark.L2
@pytest.mark.L3
async def test_requests_in_flight_with_the_old_token_succeed_during_a_refresh(
    auth_client: httpx.AsyncClient,
    key_user: KeyUser,
) -> None:
    old = await login(auth_client, key_user.api_key)

    async def in_flight() -> tuple[int, str | None]:
        return await me_status(auth_client, old.access)

    results = await asyncio.gather(
        *(in_flight() for _ in range(10)),
        _refresh(auth_client, old.refresh),
        *(in_flight() for _ in range(10)),
    )
    statuses = [r for r in results if isinstance(r, tuple)]
    refreshed = next(r for r in results if isinstance(r, httpx.Response))

    new = Tokens.of(refreshed)
    assert statuses == [(200, None)] * 20, "a request raced with the refresh and failed"
    assert new.session_id == old.session_id
    # Queued requests, sent after the refresh: both access tokens work until they expire.
    assert await me_status(auth_client, old.access) == (200, None)
    assert await me_status(auth_client, new.access) == (200, None)
    # ...but the old refresh token is spent: presenting it again is reuse.
    replay = await _refresh(auth_client, old.refresh)
    assert (replay.status_code, error_of(replay)) == (401, "refresh_reused")


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.slow
async def test_the_old_access_token_stops_at_its_own_expiry_not_before(
    auth_client: httpx.AsyncClient,
    key_user: KeyUser,
) -> None:
    # 1 s, not the platform's 900: the refresh must keep what the session asked for.
    old = await login(auth_client, key_user.api_key, ttl=1)
    new = Tokens.of(await _refresh(auth_client, old.refresh))
    assert new.expires_in == 1, "a refresh keeps the session's access TTL"

    async def old_expired() -> bool:
        return await me_status(auth_client, old.access) == (401, "token_expired")

    await eventually(old_expired, timeout=15, message="the pre-refresh token to expire")
    # The newer token was issued later, so it may outlive the old one briefly; a refresh with
    # the current refresh token keeps the client going.
    newest = Tokens.of(await _refresh(auth_client, new.refresh))
    assert await me_status(auth_client, newest.access) == (200, None)


@pytest.mark.L2
@pytest.mark.L3
async def test_parallel_refreshes_of_one_token_exactly_one_wins_and_reuse_revokes(
    auth_client: httpx.AsyncClient,
    key_user: KeyUser,
) -> None:
    tokens = await login(auth_client, key_user.api_key)

    responses = await asyncio.gather(*(_refresh(auth_client, tokens.refresh) for _ in range(8)))

    winners = [r for r in responses if r.status_code == 200]
    losers = [r for r in responses if r.status_code != 200]
    assert len(winners) == 1, [r.status_code for r in responses]
    errors = {(r.status_code, error_of(r)) for r in losers}
    # The first loser is detected as reuse; once that revoked the session, later ones may
    # find no session at all. Either way: refused.
    assert (401, "refresh_reused") in errors, errors
    assert errors <= {(401, "refresh_reused"), (401, "invalid_refresh_token")}, errors
    winner = Tokens.of(winners[0])
    # Reuse revokes the session: the winner's fresh pair dies with it.
    assert await me_status(auth_client, winner.access) == (401, "session_revoked")
    assert await me_status(auth_client, tokens.access) == (401, "session_revoked")
    assert (await _refresh(auth_client, winner.refresh)).status_code == 401


@pytest.mark.L2
@pytest.mark.L3
async def test_parallel_refreshes_through_two_instances_exactly_one_wins(
    clean_platform: Platform,
    key_user: KeyUser,
) -> None:
    """The race is decided in the shared store, not in one process's memory."""
    async with (
        clean_platform.client("auth", instance=0) as first,
        clean_platform.client("auth", instance=1) as second,
    ):
        tokens = await login(first, key_user.api_key)
        responses = await asyncio.gather(
            *(_refresh(client, tokens.refresh) for client in (first, second) * 4)
        )
        assert sorted(r.status_code for r in responses) == [200] + [401] * 7
        assert await me_status(second, tokens.access) == (401, "session_revoked")


@pytest.mark.L2
@pytest.mark.L3
async def test_refreshes_of_different_sessions_do_not_interfere(
    auth_client: httpx.AsyncClient,
    key_user: KeyUser,
) -> None:
    """A client with several devices refreshing at once: every session rotates on its own."""
    sessions = [await login(auth_client, key_user.api_key) for _ in range(4)]

    responses = await asyncio.gather(*(_refresh(auth_client, s.refresh) for s in sessions))

    renewed = [Tokens.of(r) for r in responses]
    assert [t.session_id for t in renewed] == [s.session_id for s in sessions]
    for tokens in renewed:
        assert await me_status(auth_client, tokens.access) == (200, None)


@pytest.mark.L2
@pytest.mark.L3
async def test_logout_during_in_flight_requests_stops_later_ones(
    auth_client: httpx.AsyncClient,
    key_user: KeyUser,
) -> None:
    """A refresh racing with a logout never resurrects the session."""
    tokens = await login(auth_client, key_user.api_key)

    refresh, logout = await asyncio.gather(
        _refresh(auth_client, tokens.refresh),
        auth_client.post("/auth/logout", headers=tokens.bearer),
    )

    assert logout.status_code == 204, "the access token is valid while a refresh runs"
    # A genuine race: either may win. If the logout did, the refresh finds no session.
    if refresh.status_code != 200:
        assert (refresh.status_code, error_of(refresh)) == (401, "invalid_refresh_token")
    assert await me_status(auth_client, tokens.access) == (401, "session_revoked")
    if refresh.status_code == 200:
        # The refresh won the race; the logout still ends the session it renewed.
        survivor = Tokens.of(refresh)
        assert await me_status(auth_client, survivor.access) == (401, "session_revoked")
        assert (await _refresh(auth_client, survivor.refresh)).status_code == 401


@pytest.mark.L2
@pytest.mark.L3
async def test_refreshing_one_session_leaves_the_users_other_live_session_alone(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    resource_server: KeyUser,
    auth_events: AuthEvents,
) -> None:
    """One user, two devices signed in with a password: the laptop's session is in use (its
    requests and a downstream service's context token) while the phone refreshes, twice,
    and then replays a rotated refresh token. The laptop's session never notices: its
    tokens, its refresh and its context token keep working, and nothing ends it."""
    person = await create_password_user(auth_admin)
    laptop = await bearer_login(auth_client, person)
    phone = await bearer_login(auth_client, person)
    downstream = await context_token(auth_client, laptop, "agents")
    await auth_events.forget()

    answers = await asyncio.gather(
        _refresh(auth_client, phone.refresh),
        *(me_status(auth_client, laptop.access) for _ in range(4)),
    )
    renewed = Tokens.of(cast(httpx.Response, answers[0]))
    again = Tokens.of(await _refresh(auth_client, renewed.refresh))

    assert answers[1:] == [(200, None)] * 4
    for tokens in (renewed, again):
        assert tokens.session_id == phone.session_id
        claims = jwt.decode(tokens.access, options={"verify_signature": False})
        assert (claims["sid"], claims["sub"]) == (phone.session_id, person.user_id)
    profile = (await me(auth_client, laptop.access)).json()
    assert profile["session_id"] == laptop.session_id
    listed = (await auth_client.get("/sessions", headers=again.bearer)).json()["sessions"]
    assert {s["session_id"] for s in listed} == {laptop.session_id, phone.session_id}
    assert (await introspect(auth_client, downstream, caller=resource_server))["active"] is True

    replayed = await _refresh(auth_client, phone.refresh)

    assert (replayed.status_code, error_of(replayed)) == (401, "refresh_reused")
    assert await me_status(auth_client, again.access) == (401, "session_revoked")
    assert await me_status(auth_client, laptop.access) == (200, None), "the other device ended"
    assert (await introspect(auth_client, downstream, caller=resource_server))["active"] is True
    events = await auth_events.drain()
    ended = {e.get("session_id") for e in events if e.get("type") == "session.revoked"}
    assert ended == {phone.session_id}, events
    refreshed = Tokens.of(await _refresh(auth_client, laptop.refresh))
    assert refreshed.session_id == laptop.session_id
