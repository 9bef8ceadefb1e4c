"""Fixtures of the auth test package (pytest11 plugin `auth_tests`).

Written once, wired by level: `auth_client` talks to an in-process app at L2, to
`python -m apex.auth` processes at L3 and to the --target deployment at L4. Tests make
their own users and keys through the admin API, so they also run against staging.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from apex_testkit.sut import Platform


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
