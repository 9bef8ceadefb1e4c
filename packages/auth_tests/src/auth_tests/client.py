"""A test client of apex.auth's HTTP API: the admin API, API keys, tokens, /me, the JWKS.

Public: any team's tests may import these to make their own users and sign them in
(`await AuthAdmin(client, admin_token).key_user()`, then `await login(client, api_key)`);
`client` is an `httpx.AsyncClient` of apex.auth, e.g. `platform.client("auth")`. Every
helper works at L2, L3 and L4: it uses only the public HTTP API.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import re
import secrets
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from apex_testkit import Level, Platform

__all__ = [
    "TEST_DOMAIN",
    "AuthAdmin",
    "JwksVerifier",
    "KeyUser",
    "Tokens",
    "challenges",
    "error_of",
    "exchange",
    "idp_email",
    "login",
    "me",
    "me_status",
    "platform_transport",
    "run_namespace",
    "sign_as_platform",
]


@dataclass(frozen=True)
class KeyUser:
    """A user of the platform and one API key of theirs (plaintext, as shown once)."""

    user: dict[str, Any]
    key_id: str
    api_key: str

    @property
    def user_id(self) -> str:
        return str(self.user["id"])

    @property
    def client_credentials(self) -> tuple[str, str]:
        """The key as OAuth 2.0 client credentials (RFC 6749 section 2.3.1): the client_id
        is the key's id, the client_secret the key as it was shown."""
        return self.key_id, self.api_key


@dataclass(frozen=True)
class Tokens:
    """What a successful token exchange or refresh returns."""

    access: str
    refresh: str
    session_id: str
    expires_in: float  # seconds: whole, unless the platform's APEX_JWT_ACCESS_TTL is a fraction

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


# The e-mail domain of the users the tests create (under the reserved TLD .invalid).
TEST_DOMAIN = "tests.apex.invalid"


def idp_email(email_domain: str, idp: str = "idp") -> str:
    """A fresh address for a user an IdP (`idp`: "idp" for OIDC, "sso" for SAML) signs
    in, in a subdomain of `email_domain`: inside the run's namespace (deleted with it),
    yet in no domain an IdP is trusted for, so the login never links to a test's account."""
    return f"{uuid.uuid4().hex}@{idp}.{email_domain}"


@contextlib.contextmanager
def run_namespace(platform: Platform) -> Iterator[str]:
    """The namespace of what one test process writes to the platform: an e-mail domain.

    Users are made in it (and IdP users in its subdomains, `idp_email`), teams are named
    `<domain>/...` (`AccessAdmin`). At L4 it is one of this process's own on the shared
    deployment, and everything in it is deleted when the block ends
    (`AuthAdmin.delete_namespace`); L2/L3 reset their own state and use TEST_DOMAIN."""
    if platform.level is not Level.L4:
        yield TEST_DOMAIN
        return
    domain = f"run-{secrets.token_hex(6)}.{TEST_DOMAIN}"
    try:
        yield domain
    finally:
        asyncio.run(_delete_namespace(platform, domain))


async def _delete_namespace(platform: Platform, domain: str) -> None:
    async with platform.client("auth") as client:
        await AuthAdmin(client, platform.admin_token).delete_namespace(domain)


class AuthAdmin:
    """The admin API of apex.auth, as the tests use it to set up their world."""

    def __init__(
        self, client: httpx.AsyncClient, token: str, email_domain: str = TEST_DOMAIN
    ) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}
        # Where the users it creates get their e-mail: at L4 the run's own namespace.
        self.email_domain = email_domain

    def new_email(self) -> str:
        """A fresh address in this admin's e-mail domain."""
        return f"{uuid.uuid4().hex}@{self.email_domain}"

    async def create_user(
        self, *, tier: str = "pro", tenant_id: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"email": self.new_email(), "tier": tier}
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

    async def delete_domain(self, email_domain: str) -> int:
        """Delete every user of `email_domain` (a test run's namespace); how many."""
        response = await self.client.delete(
            "/admin/users", params={"email_domain": email_domain}, headers=self.headers
        )
        assert response.status_code == 200, response.text
        deleted: int = response.json()["deleted"]
        return deleted

    async def delete_teams_of(self, namespace: str) -> int:
        """Delete every team named `<namespace>/...` (a test run's); how many."""
        response = await self.client.delete(
            "/admin/teams", params={"namespace": namespace}, headers=self.headers
        )
        assert response.status_code == 200, response.text
        deleted: int = response.json()["deleted"]
        return deleted

    async def delete_namespace(self, namespace: str) -> tuple[int, int]:
        """Delete a test run's namespace: its teams, then its users (the e-mail domain
        and its subdomains, with the tenants they leave empty); (teams, users) deleted."""
        return await self.delete_teams_of(namespace), await self.delete_domain(namespace)

    async def audit(self, subject: str) -> list[dict[str, Any]]:
        response = await self.client.get(
            "/admin/audit", params={"subject": subject}, headers=self.headers
        )
        assert response.status_code == 200, response.text
        events: list[dict[str, Any]] = response.json()["events"]
        return events

    async def logins(self, user_id: str) -> list[str]:
        """The sessions the user's interactive logins opened (password, OIDC, SAML, 2FA),
        oldest first: the audit trail's `login.succeeded` events. A refused login adds none."""
        return [
            str(e["detail"]["session_id"])
            for e in await self.audit(user_id)
            if e["action"] == "login.succeeded"
        ]


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


def sign_as_platform(claims: dict[str, Any], signing_key: str, kid: str) -> str:
    """A JWT of `claims` signed RS256 with the platform's own key (`signing_key`: the PEM
    the `jwt_signing_key` fixture gives) under `kid`: a token whose only fault, if any, is
    in its claims."""
    return jwt.encode(claims, _private_key(signing_key), algorithm="RS256", headers={"kid": kid})


@functools.cache
def _private_key(pem: str) -> rsa.RSAPrivateKey:
    # cryptography validates an RSA key on every load of its PEM (tens of milliseconds,
    # what jwt.encode does with a PEM string each call): load each key once per process.
    key = load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey), "the platform signs with an RSA key"
    return key


def error_of(response: httpx.Response) -> str:
    """The platform's machine-readable error code of a failed response."""
    code: str = response.json()["error"]
    return code


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# One item of a WWW-Authenticate value (RFC 7235 section 4.1): an auth-param or a scheme.
_CHALLENGE_ITEM = re.compile(
    rf'\s*(?:(?P<name>{_TOKEN})\s*=\s*(?P<value>"(?:[^"\\]|\\.)*"|{_TOKEN})'
    rf"|(?P<scheme>{_TOKEN}))\s*,?"
)


def challenges(response: httpx.Response) -> dict[str, dict[str, str]]:
    """The challenges of a response's WWW-Authenticate fields (RFC 7235): auth scheme (lower
    case) -> its parameters (names lower case, quoted values unquoted)."""
    found: dict[str, dict[str, str]] = {}
    for field in response.headers.get_list("www-authenticate"):
        params: dict[str, str] | None = None
        position = 0
        while position < len(field):
            match = _CHALLENGE_ITEM.match(field, position)
            assert match is not None, f"unparsable: {field!r}"
            assert match.end() > position, f"unparsable: {field!r}"
            position = match.end()
            if match["scheme"] is not None:
                params = found.setdefault(match["scheme"].lower(), {})
                continue
            assert params is not None, f"a parameter before any scheme: {field!r}"
            value = match["value"]
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[match["name"].lower()] = value
    return found


async def me(client: httpx.AsyncClient, access: str) -> httpx.Response:
    """GET /me with a bearer access token."""
    return await client.get("/me", headers={"Authorization": f"Bearer {access}"})


async def me_status(client: httpx.AsyncClient, access: str) -> tuple[int, str | None]:
    """(status, error code or None) of GET /me with this access token."""
    response = await me(client, access)
    return response.status_code, (None if response.status_code == 200 else error_of(response))


def _authlib_httpx() -> Any:
    """The httpx module authlib's clients are built on: httpx2 where it is installed
    (authlib prefers it; the openai SDK requires it), else httpx."""
    try:
        return importlib.import_module("httpx2")
    except ImportError:
        return httpx


def platform_transport(client: httpx.AsyncClient) -> Any:
    """A transport that reaches the platform the way `client` does (in-process at L2, over a
    socket at L3/L4), so a third-party client library built on httpx or httpx2 (authlib) can
    be pointed at it: `AsyncOAuth2Client(..., transport=platform_transport(auth_client),
    base_url=str(auth_client.base_url))`. Requests and answers are copied between the two
    libraries, bytes and headers as they are."""
    library = _authlib_httpx()

    class Through(library.AsyncBaseTransport):  # type: ignore[misc,name-defined]
        async def handle_async_request(self, request: Any) -> Any:
            sent = httpx.Request(
                request.method,
                str(request.url),
                headers=list(request.headers.multi_items()),
                content=await request.aread(),
            )
            response = await client.send(sent)
            content = await response.aread()
            # The body is decoded already: drop what described its encoding on the wire.
            headers = [
                (name, value)
                for name, value in response.headers.multi_items()
                if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")
            ]
            return library.Response(response.status_code, headers=headers, content=content)

    return Through()


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
