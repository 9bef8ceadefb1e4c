"""001#6 Concurrent login sessions: one user on several devices, per-tier device limits (a login
over the limit evicts the OLDEST session, audited `session.revoked` reason `device_limit`;
however many logins race, exactly the limit stays alive), listing and revoking devices.

A "device" is a session: every login (API key exchange, password, OIDC, SAML) makes one.
The WebSocket multiplexing of several devices belongs to the gateway's tests.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from apex_testkit import FakeIdp, Platform
from auth_tests.client import AuthAdmin, KeyUser, Tokens, idp_email, login, me_status
from auth_tests.faults import redis_fault
from auth_tests.flows import PasswordUser, create_password_user, oidc_login, password_login

BVJ = pytest.mark.bvj(
    segment="enterprise", goal="Multi-device support with enforceable per-tier limits",
    mrr=5000, scenario="001#6",
)  # fmt: skip
pytestmark = [BVJ]

SMALL_LIMITS = "free=1,pro=3,enterprise=4"


@pytest.fixture
async def limited_client(
    clean_platform: Platform,
) -> AsyncIterator[httpx.AsyncClient]:
    """apex.auth with small device limits, so a test can go over each tier's limit."""
    async with clean_platform.client("auth", APEX_DEVICE_LIMITS=SMALL_LIMITS) as client:
        yield client


async def _sessions(client: httpx.AsyncClient, tokens: Tokens) -> list[dict[str, Any]]:
    response = await client.get("/sessions", headers=tokens.bearer)
    assert response.status_code == 200, response.text
    sessions: list[dict[str, Any]] = response.json()["sessions"]
    return sessions


async def _alive(client: httpx.AsyncClient, devices: list[Tokens]) -> list[bool]:
    states = [await me_status(client, d.access) for d in devices]
    for state in states:
        assert state in ((200, None), (401, "session_revoked")), state
    return [state == (200, None) for state in states]


def _revocations(events: list[dict[str, Any]], reason: str) -> list[str]:
    return [
        e["detail"]["session_id"]
        for e in events
        if e["action"] == "session.revoked" and e["detail"].get("reason") == reason
    ]


async def _device(client: httpx.AsyncClient, person: PasswordUser) -> Tokens:
    """One more device: an interactive (password) login."""
    return Tokens.of(await password_login(client, person.email, person.password))


async def _devices(client: httpx.AsyncClient, person: PasswordUser, count: int) -> list[Tokens]:
    return [await _device(client, person) for _ in range(count)]


@pytest.mark.L2
@pytest.mark.L3
async def test_several_devices_stay_signed_in_together(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
) -> None:
    person = await create_password_user(auth_admin, tier="pro")
    devices = await _devices(auth_client, person, 3)

    assert await _alive(auth_client, devices) == [True, True, True]
    listed = await _sessions(auth_client, devices[1])
    assert [s["session_id"] for s in listed] == [d.session_id for d in devices], "oldest first"
    assert [s["current"] for s in listed] == [False, True, False]
    assert {s["method"] for s in listed} == {"password"}


@pytest.mark.L2
@pytest.mark.L3
async def test_free_tier_default_limit_of_two_evicts_the_oldest(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
) -> None:
    person = await create_password_user(auth_admin, tier="free")
    laptop, phone = await _devices(auth_client, person, 2)
    assert await _alive(auth_client, [laptop, phone]) == [True, True]

    tablet = await _device(auth_client, person)

    assert await _alive(auth_client, [laptop, phone, tablet]) == [False, True, True]
    refresh = await auth_client.post("/auth/refresh", json={"refresh_token": laptop.refresh})
    assert refresh.status_code == 401, "an evicted device cannot refresh its way back"
    listed = [s["session_id"] for s in await _sessions(auth_client, tablet)]
    assert listed == [phone.session_id, tablet.session_id]


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.parametrize(("tier", "limit"), [("free", 1), ("pro", 3), ("enterprise", 4)])
async def test_each_tier_has_its_own_limit(
    limited_client: httpx.AsyncClient,
    admin_token: str,
    tier: str,
    limit: int,
) -> None:
    person = await create_password_user(AuthAdmin(limited_client, admin_token), tier=tier)

    devices = await _devices(limited_client, person, limit + 1)

    assert await _alive(limited_client, devices) == [False] + [True] * limit
    listed = [s["session_id"] for s in await _sessions(limited_client, devices[-1])]
    assert listed == [d.session_id for d in devices[1:]]


@pytest.mark.L2
@pytest.mark.L3
async def test_eviction_is_audited_with_reason_device_limit(
    limited_client: httpx.AsyncClient,
    admin_token: str,
) -> None:
    admin = AuthAdmin(limited_client, admin_token)
    person = await create_password_user(admin, tier="pro")
    devices = await _devices(limited_client, person, 5)

    events = await admin.audit(person.user_id)

    assert _revocations(events, "device_limit") == [devices[0].session_id, devices[1].session_id]


@pytest.mark.L2
@pytest.mark.L3
async def test_refreshing_does_not_make_a_device_younger(
    limited_client: httpx.AsyncClient,
    admin_token: str,
) -> None:
    """ "Oldest" is the session created first: a device that refreshes keeps its age."""
    person = await create_password_user(AuthAdmin(limited_client, admin_token), tier="pro")
    first, second, third = await _devices(limited_client, person, 3)
    renewed = Tokens.of(
        await limited_client.post("/auth/refresh", json={"refresh_token": first.refresh})
    )

    fourth = await _device(limited_client, person)

    assert await _alive(limited_client, [renewed, second, third, fourth]) == [
        False,
        True,
        True,
        True,
    ]


@pytest.mark.L2
@pytest.mark.L3
async def test_a_signed_out_device_frees_its_slot(
    limited_client: httpx.AsyncClient,
    admin_token: str,
) -> None:
    """Only live sessions count: after a logout, a new login evicts nobody."""
    admin = AuthAdmin(limited_client, admin_token)
    person = await create_password_user(admin, tier="pro")
    first, second, third = await _devices(limited_client, person, 3)
    logout = await limited_client.post("/auth/logout", headers=second.bearer)
    assert logout.status_code == 204

    fourth = await _device(limited_client, person)

    assert await _alive(limited_client, [first, third, fourth]) == [True, True, True]
    assert _revocations(await admin.audit(person.user_id), "device_limit") == []


@pytest.mark.L2
@pytest.mark.L3
async def test_limits_are_per_user(
    limited_client: httpx.AsyncClient,
    admin_token: str,
) -> None:
    admin = AuthAdmin(limited_client, admin_token)
    alice = await create_password_user(admin, tier="free")
    bob = await create_password_user(admin, tier="free")
    alice_device = await _device(limited_client, alice)

    bob_devices = await _devices(limited_client, bob, 2)

    assert await _alive(limited_client, [alice_device]) == [True]
    assert await _alive(limited_client, bob_devices) == [False, True]


@pytest.mark.L2
@pytest.mark.L3
async def test_upgrading_the_tier_raises_the_limit_for_the_next_login(
    limited_client: httpx.AsyncClient,
    admin_token: str,
) -> None:
    admin = AuthAdmin(limited_client, admin_token)
    person = await create_password_user(admin, tier="free")
    first = await _device(limited_client, person)
    await admin.set_tier(person.user_id, "pro")

    second, third = await _devices(limited_client, person, 2)

    assert await _alive(limited_client, [first, second, third]) == [True, True, True]


@pytest.mark.L2
@pytest.mark.L3
async def test_concurrent_logins_never_exceed_the_limit(
    limited_client: httpx.AsyncClient,
    admin_token: str,
) -> None:
    """Six devices sign in at the same moment: exactly the limit stays alive (never more,
    never fewer: the eviction is one atomic step, issue 10)."""
    admin = AuthAdmin(limited_client, admin_token)
    person = await create_password_user(admin, tier="pro")

    devices = await asyncio.gather(*(_device(limited_client, person) for _ in range(6)))

    alive = await _alive(limited_client, list(devices))
    assert alive.count(True) == 3, alive
    survivors = {d.session_id for d, ok in zip(devices, alive, strict=True) if ok}
    evicted = {d.session_id for d, ok in zip(devices, alive, strict=True) if not ok}
    listed = await _sessions(limited_client, devices[alive.index(True)])
    assert {s["session_id"] for s in listed} == survivors
    revoked = _revocations(await admin.audit(person.user_id), "device_limit")
    assert sorted(revoked) == sorted(evicted), "each eviction audited exactly once"


@pytest.fixture
async def limited_instances(
    clean_platform: Platform,
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Two apex.auth instances with the small device limits, on the same servers, whose
    lockout admits many sign-ins at once (so that they race)."""
    settings = {"APEX_DEVICE_LIMITS": SMALL_LIMITS, "APEX_LOGIN_LOCKOUT": "100/900"}
    async with (
        clean_platform.client("auth", instance=0, **settings) as first,
        clean_platform.client("auth", instance=1, **settings) as second,
    ):
        yield first, second


@pytest.mark.L2
@pytest.mark.L3
async def test_concurrent_logins_through_two_instances_leave_exactly_the_limit(
    limited_instances: tuple[httpx.AsyncClient, httpx.AsyncClient],
    admin_token: str,
) -> None:
    """The contract (services/docs/contract-identity.md, issue 10): after any number of
    concurrent logins exactly the tier's limit of sessions is alive, never fewer, never
    more, and each eviction is audited once. Rounds of ten devices signing in at once,
    half through each instance, pro tier (limit 3)."""
    first, second = limited_instances
    admin = AuthAdmin(first, admin_token)
    person = await create_password_user(admin, tier="pro")
    everyone: list[Tokens] = []

    for round_ in range(3):
        devices = await asyncio.gather(
            *(_device(first if n % 2 else second, person) for n in range(10))
        )
        everyone.extend(devices)

        alive = await _alive(first, everyone)
        assert alive.count(True) == 3, f"round {round_}: {alive}"
        survivors = {d.session_id for d, ok in zip(everyone, alive, strict=True) if ok}
        listed = await _sessions(second, everyone[alive.index(True)])
        assert {s["session_id"] for s in listed} == survivors
        evicted = [d.session_id for d, ok in zip(everyone, alive, strict=True) if not ok]
        revoked = _revocations(await admin.audit(person.user_id), "device_limit")
        assert sorted(revoked) == sorted(evicted), f"round {round_}: each eviction audited once"


@pytest.mark.L3
async def test_concurrent_logins_over_a_slow_redis_leave_exactly_the_limit(
    clean_platform: Platform, admin_token: str
) -> None:
    """The same contract with the race window wide open: every Redis round trip of the
    instance takes 60 ms more (a fault proxy; a round trip is otherwise well under a
    millisecond), so each login's session exists well before that login looks at the
    user's other sessions."""
    async with redis_fault(
        clean_platform,
        instance=2,
        APEX_DEVICE_LIMITS=SMALL_LIMITS,
        APEX_LOGIN_LOCKOUT="100/900",
    ) as fault:
        admin = AuthAdmin(fault.client, admin_token)
        person = await create_password_user(admin, tier="pro")
        everyone: list[Tokens] = []

        for round_ in range(4):
            fault.proxy.latency(30)  # each way
            everyone.extend(
                await asyncio.gather(*(_device(fault.client, person) for _ in range(10)))
            )
            fault.proxy.clear()

            alive = await _alive(fault.client, everyone)
            assert alive.count(True) == 3, f"round {round_}: {alive}"
            evicted = [d.session_id for d, ok in zip(everyone, alive, strict=True) if not ok]
            revoked = _revocations(await admin.audit(person.user_id), "device_limit")
            assert sorted(revoked) == sorted(evicted), "each eviction audited exactly once"


@pytest.mark.L2
@pytest.mark.L3
async def test_api_key_sessions_neither_count_nor_get_evicted(
    limited_client: httpx.AsyncClient,
    admin_token: str,
) -> None:
    """SUT_NOTES: device limits count interactive sessions only (method != api_key), so
    automation with API keys is never signed out by a person's logins, and vice versa."""
    admin = AuthAdmin(limited_client, admin_token)
    person = await create_password_user(admin, tier="free")
    key = await admin.create_api_key(person.user_id)
    scripts = [await login(limited_client, key["api_key"]) for _ in range(3)]

    browser = await _device(limited_client, person)
    assert await _alive(limited_client, [*scripts, browser]) == [True] * 4
    phone = await _device(limited_client, person)

    assert await _alive(limited_client, [*scripts, browser, phone]) == [True] * 3 + [False, True]


@pytest.mark.L2
@pytest.mark.L3
async def test_sessions_list_names_each_devices_login_method(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
) -> None:
    person = await create_password_user(auth_admin, tier="pro")
    key = await auth_admin.create_api_key(person.user_id)
    browser = Tokens.of(await password_login(auth_client, person.email, person.password))
    script = await login(auth_client, key["api_key"])

    listed = await _sessions(auth_client, browser)

    assert [(s["session_id"], s["method"], s["current"]) for s in listed] == [
        (browser.session_id, "password", True),
        (script.session_id, "api_key", False),
    ]
    assert listed[0]["api_key_id"] is None
    assert listed[1]["api_key_id"] == key["id"]


@pytest.mark.L2
@pytest.mark.L3
async def test_a_device_can_be_signed_out_from_another_and_it_is_audited(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    key_user: KeyUser,
) -> None:
    laptop, phone, tablet = [await login(auth_client, key_user.api_key) for _ in range(3)]

    ended = await auth_client.delete(f"/sessions/{phone.session_id}", headers=laptop.bearer)

    assert ended.status_code == 204
    assert await _alive(auth_client, [laptop, phone, tablet]) == [True, False, True]
    listed = [s["session_id"] for s in await _sessions(auth_client, tablet)]
    assert listed == [laptop.session_id, tablet.session_id]
    again = await auth_client.delete(f"/sessions/{phone.session_id}", headers=laptop.bearer)
    assert again.status_code == 404
    revoked = [
        e for e in await auth_admin.audit(key_user.user_id) if e["action"] == "session.revoked"
    ]
    assert [(e["detail"]["session_id"], e["detail"]["reason"]) for e in revoked] == [
        (phone.session_id, "deleted")
    ]
    assert revoked[0]["actor"] == f"user:{key_user.user_id}"


@pytest.mark.L2
@pytest.mark.L3
async def test_sso_logins_are_devices_too(
    auth_client: httpx.AsyncClient,
    fake_idp: FakeIdp,
    email_domain: str,
) -> None:
    """A JIT-provisioned (free tier) OIDC user signing in from three browsers: the first goes."""
    sub = uuid.uuid4().hex
    devices = [
        Tokens.of(await oidc_login(auth_client, fake_idp, sub=sub, email=idp_email(email_domain)))
        for _ in range(3)
    ]

    assert await _alive(auth_client, devices) == [False, True, True]
    listed = await _sessions(auth_client, devices[-1])
    assert [(s["session_id"], s["method"]) for s in listed] == [
        (devices[1].session_id, "oidc"),
        (devices[2].session_id, "oidc"),
    ]
