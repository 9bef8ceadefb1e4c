"""Identity flows of apex.auth as a user goes through them: password login, TOTP, OIDC.

Public: password users made through the admin API, an RFC 6238 TOTP computed
independently of the platform's library, and the OIDC browser round trip against the
kit's fake IdP (`fake_idp`, L2/L3). `client` is an `httpx.AsyncClient` of apex.auth.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from apex_testkit import FakeIdp, tls_context
from auth_tests.client import AuthAdmin, Tokens

__all__ = [
    "STRONG_PASSWORD",
    "Enrolled",
    "PasswordUser",
    "bearer_login",
    "create_password_user",
    "enroll_totp",
    "oidc_authorize",
    "oidc_callback",
    "oidc_login",
    "oidc_start",
    "password_login",
    "query_of",
    "totp_code",
]

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
        "email": email or admin.new_email(),
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
    async with httpx.AsyncClient(timeout=10, verify=tls_context()) as browser:
        response = await browser.get(location)
    assert response.status_code == 302, response.text
    back = response.headers["location"]
    assert urlsplit(back).path == "/auth/oidc/callback", back
    return query_of(back)


async def oidc_callback(
    client: httpx.AsyncClient, code: str | None, state: str | None, **params: str
) -> httpx.Response:
    """GET /auth/oidc/callback from the browser `client` is: with the cookies it holds.

    `code` and `state` (left out when None) and any other query parameters the IdP sends
    back (`error="access_denied"`). The platform binds the login to the browser with a
    `Secure` cookie; a browser sends it to a secure context (https, or localhost), httpx
    only over https, so at L2/L3 (plain http on loopback) the browser's cookies are sent
    explicitly."""
    cookies = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
    headers = {"Cookie": cookies} if cookies else {}
    query = {
        name: value
        for name, value in {"code": code, "state": state, **params}.items()
        if value is not None
    }
    return await client.get("/auth/oidc/callback", params=query, headers=headers)


async def oidc_login(
    client: httpx.AsyncClient,
    idp: FakeIdp,
    *,
    email: str,
    sub: str | None = None,
    groups: Sequence[str] = (),
    tenant: str | None = None,
) -> httpx.Response:
    """The whole OIDC browser round trip as `sub`/`email` (a test's own namespace, e.g.
    `client.idp_email(email_domain)`); the callback's response."""
    idp.login_as(
        sub or uuid.uuid4().hex,
        email,
        groups=list(groups),
        tenant=tenant,
    )
    back = await oidc_authorize(await oidc_start(client))
    return await oidc_callback(client, back["code"], back["state"])
