"""Fixtures of the auth test package (pytest11 plugin `auth_tests`).

Written once, wired by level: `auth_client` talks to an in-process app at L2, to
`python -m apex.auth` processes at L3 and to the --target deployment at L4. Tests make
their own users and keys through the admin API, so they also run against staging.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import httpx
import jwt
import pytest
from redis.asyncio import Redis as AsyncRedis

from apex_testkit import FakeIdp, FaultProxy, Level, Platform, RedisNamespace, eventually


@dataclass(frozen=True)
class KeyUser:
    """A user of the platform and one API key of theirs (plaintext, as shown once)."""

    user: dict[str, Any]
    key_id: str
    api_key: str

    @property
    def user_id(self) -> str:
        return str(self.user["id"])


@dataclass(frozen=True)
class Tokens:
    """What a successful token exchange or refresh returns."""

    access: str
    refresh: str
    session_id: str
    expires_in: int

    @classmethod
    def of(cls, response: httpx.Response) -> Tokens:
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["token_type"] == "Bearer"
        return cls(
            body["access_token"], body["refresh_token"], body["session_id"], body["expires_in"]
        )

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access}"}


class AuthAdmin:
    """The admin API of apex.auth, as the tests use it to set up their world."""

    def __init__(self, client: httpx.AsyncClient, token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}

    async def create_user(
        self, *, tier: str = "pro", tenant_id: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"email": f"{uuid.uuid4().hex}@tests.apex.invalid", "tier": tier}
        if tenant_id is not None:
            body["tenant_id"] = tenant_id
        response = await self.client.post("/admin/users", json=body, headers=self.headers)
        assert response.status_code == 201, response.text
        user: dict[str, Any] = response.json()
        return user

    async def create_api_key(
        self, user_id: str, *, scopes: Sequence[str] = ("agents:run",), name: str = "tests"
    ) -> dict[str, Any]:
        response = await self.client.post(
            f"/admin/users/{user_id}/api-keys",
            json={"name": name, "scopes": list(scopes)},
            headers=self.headers,
        )
        assert response.status_code == 201, response.text
        key: dict[str, Any] = response.json()
        return key

    async def key_user(
        self,
        *,
        tier: str = "pro",
        scopes: Sequence[str] = ("agents:run",),
        tenant_id: str | None = None,
    ) -> KeyUser:
        """A new user with one new API key."""
        user = await self.create_user(tier=tier, tenant_id=tenant_id)
        key = await self.create_api_key(user["id"], scopes=scopes)
        return KeyUser(user, key["id"], key["api_key"])

    async def set_tier(self, user_id: str, tier: str) -> None:
        response = await self.client.patch(
            f"/admin/users/{user_id}", json={"tier": tier}, headers=self.headers
        )
        assert response.status_code == 200, response.text

    async def revoke_api_key(self, key_id: str) -> None:
        response = await self.client.delete(f"/admin/api-keys/{key_id}", headers=self.headers)
        assert response.status_code == 204, response.text

    async def api_key(self, key_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/admin/api-keys/{key_id}", headers=self.headers)
        assert response.status_code == 200, response.text
        key: dict[str, Any] = response.json()
        return key

    async def audit(self, subject: str) -> list[dict[str, Any]]:
        response = await self.client.get(
            "/admin/audit", params={"subject": subject}, headers=self.headers
        )
        assert response.status_code == 200, response.text
        events: list[dict[str, Any]] = response.json()["events"]
        return events


async def exchange(
    client: httpx.AsyncClient, api_key: str, ttl: int | None = None
) -> httpx.Response:
    """POST /auth/token: trade an API key for tokens."""
    body: dict[str, Any] = {"api_key": api_key}
    if ttl is not None:
        body["ttl"] = ttl
    return await client.post("/auth/token", json=body)


async def login(client: httpx.AsyncClient, api_key: str, ttl: int | None = None) -> Tokens:
    """A successful exchange: the tokens of a new session."""
    return Tokens.of(await exchange(client, api_key, ttl))


def error_of(response: httpx.Response) -> str:
    """The platform's machine-readable error code of a failed response."""
    code: str = response.json()["error"]
    return code


@pytest.fixture
async def auth_client(clean_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of apex.auth, wired for the run's level, on a clean platform."""
    async with clean_platform.client("auth") as client:
        yield client


@pytest.fixture
def auth_admin(auth_client: httpx.AsyncClient, admin_token: str) -> AuthAdmin:
    """The admin API, to create users and API keys."""
    return AuthAdmin(auth_client, admin_token)


@pytest.fixture
async def key_user(auth_admin: AuthAdmin) -> KeyUser:
    """A pro-tier user with one API key."""
    return await auth_admin.key_user()


@pytest.fixture
async def auth_db(postgres_database: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the database behind apex.auth (L2/L3 only: a deployment's is not ours)."""
    conn = await asyncpg.connect(postgres_database)
    try:
        yield conn
    finally:
        await conn.close()


# --- identity flows (D1) ---
# Helpers of the identity-flow modules (OIDC, SAML, 2FA, password reset, devices, refresh):
# password users, an RFC 6238 TOTP computed independently of the platform's library, and a
# downstream JWT verifier that knows nothing but the published JWKS.

STRONG_PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class PasswordUser:
    """A user who signs in with email and password (and maybe a phone for SMS codes)."""

    user: dict[str, Any]
    password: str
    phone: str | None = None

    @property
    def user_id(self) -> str:
        return str(self.user["id"])

    @property
    def email(self) -> str:
        return str(self.user["email"])


async def create_password_user(
    admin: AuthAdmin,
    *,
    tier: str = "pro",
    password: str = STRONG_PASSWORD,
    phone: str | None = None,
    email: str | None = None,
    tenant_id: str | None = None,
) -> PasswordUser:
    """POST /admin/users with a password (and phone): a user of the password login."""
    body: dict[str, Any] = {
        "email": email or f"{uuid.uuid4().hex}@tests.apex.invalid",
        "tier": tier,
        "password": password,
    }
    if phone is not None:
        body["phone"] = phone
    if tenant_id is not None:
        body["tenant_id"] = tenant_id
    response = await admin.client.post("/admin/users", json=body, headers=admin.headers)
    assert response.status_code == 201, response.text
    return PasswordUser(response.json(), password, phone)


async def password_login(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    """POST /auth/login."""
    return await client.post("/auth/login", json={"email": email, "password": password})


def totp_code(secret: str, *, at: float | None = None, steps: int = 0) -> str:
    """RFC 6238 TOTP (SHA-1, 30 s, 6 digits) of a base32 secret, `steps` time steps from `at`."""
    key = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    counter = int(time.time() if at is None else at) // 30 + steps
    digest = hmac.new(key, counter.to_bytes(8, "big"), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = int.from_bytes(digest[offset : offset + 4], "big") & 0x7FFFFFFF
    return f"{value % 1_000_000:06d}"


@dataclass
class Enrolled:
    """A password user with TOTP confirmed: its secret, backup codes, last TOTP step used."""

    person: PasswordUser
    secret: str
    backup_codes: list[str]
    step: int

    def next_code(self) -> str:
        """A TOTP code of a step not used yet (the next one; valid_window=1 accepts it)."""
        self.step += 1
        return totp_code(self.secret, at=self.step * 30)

    def wrong_code(self) -> str:
        """A 6-digit code that no step near now matches."""
        now = int(time.time()) // 30
        near = {totp_code(self.secret, at=(now + k) * 30) for k in range(-3, 4)}
        return next(c for c in ("000000", "111111", "123456", "999999") if c not in near)


async def bearer_login(client: httpx.AsyncClient, person: PasswordUser) -> Tokens:
    """The tokens of a password login that needs no second factor."""
    return Tokens.of(await password_login(client, person.email, person.password))


async def enroll_totp(client: httpx.AsyncClient, person: PasswordUser) -> Enrolled:
    """Set up and confirm TOTP for `person` (signed in with the password)."""
    tokens = await bearer_login(client, person)
    setup = await client.post("/me/2fa/totp", headers=tokens.bearer)
    assert setup.status_code == 200, setup.text
    secret = setup.json()["secret"]
    step = int(time.time()) // 30
    confirm = await client.post(
        "/me/2fa/totp/confirm",
        json={"code": totp_code(secret, at=step * 30)},
        headers=tokens.bearer,
    )
    assert confirm.status_code == 200, confirm.text
    return Enrolled(person, secret, list(confirm.json()["backup_codes"]), step)


class JwksVerifier:
    """A downstream service's view of apex.auth: it trusts only the published JWKS.

    RS256 only, iss and aud required; an unknown kid makes it fetch the JWKS again (once).
    """

    def __init__(
        self, client: httpx.AsyncClient, *, issuer: str = "apex-auth", audience: str = "apex"
    ) -> None:
        self.client, self.issuer, self.audience = client, issuer, audience
        self.keys: dict[str, Any] = {}
        self.fetches = 0

    async def _refresh(self) -> None:
        response = await self.client.get("/.well-known/jwks.json")
        assert response.status_code == 200, response.text
        self.fetches += 1
        keys = jwt.PyJWKSet.from_dict(response.json()).keys
        self.keys = {str(k.key_id): k.key for k in keys}

    async def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid access token; raises jwt.InvalidTokenError otherwise."""
        kid = jwt.get_unverified_header(token).get("kid")
        if kid not in self.keys:
            await self._refresh()
        if kid not in self.keys:
            raise jwt.InvalidTokenError(f"unknown kid {kid!r}")
        claims: dict[str, Any] = jwt.decode(
            token,
            self.keys[kid],
            algorithms=["RS256"],
            audience=self.audience,
            issuer=self.issuer,
            options={"require": ["iss", "aud", "sub", "exp", "iat"]},
        )
        return claims


async def me(client: httpx.AsyncClient, access: str) -> httpx.Response:
    """GET /me with a bearer access token."""
    return await client.get("/me", headers={"Authorization": f"Bearer {access}"})


async def me_status(client: httpx.AsyncClient, access: str) -> tuple[int, str | None]:
    """(status, error code or None) of GET /me with this access token."""
    response = await me(client, access)
    return response.status_code, (None if response.status_code == 200 else error_of(response))


def query_of(url: str) -> dict[str, str]:
    """The query string of a URL, decoded."""
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


async def oidc_start(client: httpx.AsyncClient) -> str:
    """GET /auth/oidc/login: the URL of the IdP's authorization endpoint it redirects to."""
    response = await client.get("/auth/oidc/login")
    assert response.status_code == 302, response.text
    return response.headers["location"]


async def oidc_authorize(location: str) -> dict[str, str]:
    """The browser at the IdP: /authorize redirects back with code and state."""
    async with httpx.AsyncClient(timeout=10) as browser:
        response = await browser.get(location)
    assert response.status_code == 302, response.text
    back = response.headers["location"]
    assert urlsplit(back).path == "/auth/oidc/callback", back
    return query_of(back)


async def oidc_callback(client: httpx.AsyncClient, code: str, state: str) -> httpx.Response:
    """GET /auth/oidc/callback from the browser `client` is: with the cookies it holds.

    The platform binds the login to the browser with a `Secure` cookie; a browser sends it
    to a secure context (https, or localhost), httpx only over https, so at L2/L3 (plain
    http on loopback) the browser's cookies are sent explicitly."""
    cookies = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
    headers = {"Cookie": cookies} if cookies else {}
    return await client.get(
        "/auth/oidc/callback", params={"code": code, "state": state}, headers=headers
    )


async def oidc_login(
    client: httpx.AsyncClient,
    idp: FakeIdp,
    *,
    sub: str | None = None,
    email: str | None = None,
    groups: Sequence[str] = (),
    tenant: str | None = None,
) -> httpx.Response:
    """The whole OIDC browser round trip as `sub`/`email`; the callback's response."""
    idp.login_as(
        sub or uuid.uuid4().hex,
        email or f"{uuid.uuid4().hex}@idp.apex.invalid",
        groups=list(groups),
        tenant=tenant,
    )
    back = await oidc_authorize(await oidc_start(client))
    return await oidc_callback(client, back["code"], back["state"])


@pytest.fixture
async def trusting_auth_client(clean_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """apex.auth whose OIDC and SAML IdPs may link their logins to the tests' accounts.

    An IdP login links to an existing account only for an address in a domain the IdP is
    trusted for (issue 10); the users the tests make have addresses in this one."""
    async with clean_platform.client(
        "auth",
        APEX_IDP_TRUSTED_DOMAINS="tests.apex.invalid",
        APEX_SAML_TRUSTED_DOMAINS="tests.apex.invalid",
    ) as client:
        yield client


# --- authorization and resilience (D2) ---
# Teams, grants and effective permissions; the platform's pub/sub channel; several
# instances of auth; the fault proxy between an auth process and Redis (L3).

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset({"agents:read", "billing:read"}),
    "member": frozenset({"agents:read", "billing:read", "agents:run", "teams:read"}),
    "admin": frozenset(
        {"agents:read", "billing:read", "agents:run", "teams:read", "billing:write", "teams:manage"}
    ),
}  # CONTRACT3 "Roles -> permissions (fixed, in code)"


def _succeeded(response: httpx.Response, *codes: int) -> None:
    assert response.status_code in (codes or (200, 201, 204)), (
        f"{response.request.method} {response.request.url.path}: "
        f"{response.status_code} {response.text}"
    )


class AccessAdmin:
    """The admin API of teams, memberships and grants (CONTRACT3, issue 3 B)."""

    def __init__(self, admin: AuthAdmin) -> None:
        self.client = admin.client
        self.headers = admin.headers

    async def create_team(
        self,
        *,
        parent_id: str | None = None,
        idp_group: str | None = None,
        tenant_id: str | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name or f"team-{uuid.uuid4().hex[:10]}"}
        for field, value in (
            ("parent_id", parent_id), ("idp_group", idp_group), ("tenant_id", tenant_id)
        ):  # fmt: skip
            if value is not None:
                body[field] = value
        response = await self.client.post("/admin/teams", json=body, headers=self.headers)
        assert response.status_code == 201, response.text
        team: dict[str, Any] = response.json()
        return team

    async def delete_team(self, team_id: str) -> None:
        response = await self.client.delete(f"/admin/teams/{team_id}", headers=self.headers)
        _succeeded(response, 200, 204)

    async def set_member(self, team_id: str, user_id: str, role: str) -> None:
        response = await self.client.put(
            f"/admin/teams/{team_id}/members/{user_id}", json={"role": role}, headers=self.headers
        )
        _succeeded(response)

    async def remove_member(self, team_id: str, user_id: str) -> None:
        response = await self.client.delete(
            f"/admin/teams/{team_id}/members/{user_id}", headers=self.headers
        )
        _succeeded(response, 200, 204)

    async def grant_team(self, team_id: str, permission: str, effect: str = "allow") -> None:
        response = await self.client.put(
            f"/admin/teams/{team_id}/grants/{permission}",
            json={"effect": effect},
            headers=self.headers,
        )
        _succeeded(response)

    async def drop_team_grant(self, team_id: str, permission: str) -> None:
        response = await self.client.delete(
            f"/admin/teams/{team_id}/grants/{permission}", headers=self.headers
        )
        _succeeded(response, 200, 204)

    async def grant_user(self, user_id: str, permission: str, effect: str = "allow") -> None:
        response = await self.client.put(
            f"/admin/users/{user_id}/grants/{permission}",
            json={"effect": effect},
            headers=self.headers,
        )
        _succeeded(response)

    async def drop_user_grant(self, user_id: str, permission: str) -> None:
        response = await self.client.delete(
            f"/admin/users/{user_id}/grants/{permission}", headers=self.headers
        )
        _succeeded(response, 200, 204)

    async def permissions(self, user_id: str) -> list[str]:
        response = await self.client.get(
            f"/admin/users/{user_id}/permissions", headers=self.headers
        )
        assert response.status_code == 200, response.text
        permissions: list[str] = response.json()["permissions"]
        return permissions


async def my_permissions(client: httpx.AsyncClient, tokens: Tokens) -> list[str]:
    """GET /me/permissions: the caller's effective permissions, as the platform lists them."""
    response = await client.get("/me/permissions", headers=tokens.bearer)
    assert response.status_code == 200, response.text
    permissions: list[str] = response.json()["permissions"]
    return permissions


async def is_allowed(client: httpx.AsyncClient, tokens: Tokens, permission: str) -> bool:
    """POST /authz/check, what other services ask before they act for the user."""
    response = await client.post(
        "/authz/check", json={"permission": permission}, headers=tokens.bearer
    )
    assert response.status_code == 200, response.text
    allowed = response.json()["allowed"]
    assert isinstance(allowed, bool), response.text
    return allowed


async def context_token(client: httpx.AsyncClient, tokens: Tokens, audience: str) -> str:
    """POST /auth/context-token: a user-context JWT for a call to service `audience`."""
    response = await client.post(
        "/auth/context-token", json={"audience": audience}, headers=tokens.bearer
    )
    assert response.status_code in (200, 201), response.text
    token: str = response.json()["context_token"]
    return token


async def introspect(client: httpx.AsyncClient, token: str) -> dict[str, Any]:
    """POST /auth/context-token/introspect (RFC 7662 style): {"active": bool, ...claims}."""
    response = await client.post("/auth/context-token/introspect", json={"token": token})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert isinstance(body.get("active"), bool), response.text
    return body


@pytest.fixture
def access_admin(auth_admin: AuthAdmin) -> AccessAdmin:
    """The admin API of teams and grants, on `auth_client`."""
    return AccessAdmin(auth_admin)


@pytest.fixture
async def other_instance(clean_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a second auth instance on the same servers (its own memory: L2/L3)."""
    async with clean_platform.client("auth", instance=1) as client:
        yield client


class AuthEvents:
    """What the platform publishes on `<prefix>auth:events`, heard as another instance would."""

    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub
        self.seen: list[dict[str, Any]] = []

    async def _pull(self, timeout: float) -> None:
        message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        if message is not None and message.get("type") == "message":
            try:
                event = json.loads(message["data"])
            except ValueError:
                event = {"unparsable": message["data"]}
            self.seen.append(event if isinstance(event, dict) else {"value": event})

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = 5.0
    ) -> dict[str, Any]:
        """The first event (seen so far or arriving before the deadline) that matches."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.seen:
                if predicate(event):
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching event in {timeout} s; seen: {self.seen}")
            await self._pull(min(remaining, 0.2))

    async def forget(self, *, settle: float = 0.1) -> None:
        """Drop every event so far, including those still in flight from earlier changes."""
        await self.drain(timeout=settle)
        self.seen.clear()

    async def drain(self, *, timeout: float = 0.3) -> list[dict[str, Any]]:
        """Whatever arrives within `timeout` (to check what was NOT published)."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            await self._pull(min(remaining, 0.05))
        return self.seen


@pytest.fixture
async def auth_events(redis_namespace: RedisNamespace) -> AsyncIterator[AuthEvents]:
    """A subscriber of this worker's `<prefix>auth:events` channel (L2/L3)."""
    client = AsyncRedis.from_url(redis_namespace.url, decode_responses=True)
    pubsub = client.pubsub()
    await pubsub.subscribe(f"{redis_namespace.prefix}auth:events")
    confirmed = await pubsub.get_message(timeout=5)
    assert confirmed is not None, "no subscribe confirmation from Redis"
    assert confirmed["type"] == "subscribe", confirmed
    try:
        yield AuthEvents(pubsub)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
        await client.aclose()


@dataclass
class RedisFault:
    """An auth process (L3) whose every Redis connection goes through `proxy`."""

    client: httpx.AsyncClient
    proxy: FaultProxy


@asynccontextmanager
async def redis_fault(
    platform: Platform, *, instance: int, **settings: str
) -> AsyncIterator[RedisFault]:
    """Auth instance `instance` with a fault proxy to Redis (L3 only); the proxy is
    cleared and the instance healthy when this starts, and cleared again when it ends."""
    if platform.level is not Level.L3:
        pytest.fail("Redis faults need auth as a process: mark the test L3 only", pytrace=False)
    process = platform.instance("auth", instance, via_proxy=("redis",), **settings)
    proxy = platform.proxy("auth", instance, "redis")
    proxy.clear()
    async with httpx.AsyncClient(base_url=process.url, timeout=30) as client:

        async def healthy() -> bool:
            return (await client.get("/healthz")).status_code == 200

        await eventually(healthy, timeout=15, message="the proxied auth instance to be healthy")
        try:
            yield RedisFault(client, proxy)
        except BaseException:
            log = process.log.read_text(errors="replace") if process.log.exists() else ""
            print(f"--- tail of {process.log}:\n{log[-4000:]}")
            raise
        finally:
            proxy.clear()
