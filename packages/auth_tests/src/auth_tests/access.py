"""Authorization in apex.auth: teams, memberships, grants, effective permissions, context tokens.

Public: `AccessAdmin` (the admin API of teams and grants, CONTRACT3), the fixed
role -> permissions table, `granted_user` (a new user with permissions, signed in: what
other teams' tests act as), `service_user` (such a user with a context token for one
service: a `ServiceUser`), `bearer`, and what other services ask apex.auth before they act
for a user (`/authz/check`, context tokens and their introspection). `client` is an
`httpx.AsyncClient` of apex.auth.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from auth_tests.client import AuthAdmin, KeyUser, Tokens, login

__all__ = [
    "ROLE_PERMISSIONS",
    "AccessAdmin",
    "ServiceUser",
    "bearer",
    "context_token",
    "granted_user",
    "introspect",
    "is_allowed",
    "my_permissions",
    "service_user",
]

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset({"agents:read", "billing:read"}),
    "member": frozenset({"agents:read", "billing:read", "agents:run", "teams:read"}),
    "admin": frozenset(
        {"agents:read", "billing:read", "agents:run", "teams:read", "billing:write", "teams:manage"}
    ),
}  # CONTRACT3 "Roles -> permissions (fixed, in code)"


def _succeeded(response: httpx.Response, status: int) -> None:
    """The one success status the contract names (CONTRACT3 notes: PUT 200, DELETE 204)."""
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url.path}: "
        f"{response.status_code} {response.text}"
    )


class AccessAdmin:
    """The admin API of teams, memberships and grants (CONTRACT3, issue 3 B)."""

    def __init__(self, admin: AuthAdmin) -> None:
        self.client = admin.client
        self.headers = admin.headers
        # Teams are named `<namespace>/...`: at L4 the run's, deleted with it.
        self.namespace = admin.email_domain

    async def create_team(
        self,
        *,
        parent_id: str | None = None,
        idp_group: str | None = None,
        tenant_id: str | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """A new team named `<namespace>/<name>` (a fresh name if none is given)."""
        name = name or f"team-{uuid.uuid4().hex[:10]}"
        body: dict[str, Any] = {"name": f"{self.namespace}/{name}"}
        for field, value in (
            ("parent_id", parent_id), ("idp_group", idp_group), ("tenant_id", tenant_id)
        ):  # fmt: skip
            if value is not None:
                body[field] = value
        response = await self.client.post("/admin/teams", json=body, headers=self.headers)
        assert response.status_code == 201, response.text
        team: dict[str, Any] = response.json()
        return team

    async def update_team(self, team_id: str, **fields: str | None) -> httpx.Response:
        """PATCH /admin/teams/{id} with `fields` (e.g. `parent_id=...`; None clears one):
        the response, which may be a refusal (409 `cycle`)."""
        return await self.client.patch(f"/admin/teams/{team_id}", json=fields, headers=self.headers)

    async def team(self, team_id: str) -> dict[str, Any]:
        """GET /admin/teams/{id}: the team with its members, grants and children."""
        response = await self.client.get(f"/admin/teams/{team_id}", headers=self.headers)
        assert response.status_code == 200, response.text
        team: dict[str, Any] = response.json()
        return team

    async def delete_team(self, team_id: str) -> None:
        response = await self.client.delete(f"/admin/teams/{team_id}", headers=self.headers)
        _succeeded(response, 204)

    async def set_member(self, team_id: str, user_id: str, role: str) -> None:
        response = await self.client.put(
            f"/admin/teams/{team_id}/members/{user_id}", json={"role": role}, headers=self.headers
        )
        _succeeded(response, 200)

    async def remove_member(self, team_id: str, user_id: str) -> None:
        response = await self.client.delete(
            f"/admin/teams/{team_id}/members/{user_id}", headers=self.headers
        )
        _succeeded(response, 204)

    async def grant_team(self, team_id: str, permission: str, effect: str = "allow") -> None:
        response = await self.client.put(
            f"/admin/teams/{team_id}/grants/{permission}",
            json={"effect": effect},
            headers=self.headers,
        )
        _succeeded(response, 200)

    async def drop_team_grant(self, team_id: str, permission: str) -> None:
        response = await self.client.delete(
            f"/admin/teams/{team_id}/grants/{permission}", headers=self.headers
        )
        _succeeded(response, 204)

    async def grant_user(self, user_id: str, permission: str, effect: str = "allow") -> None:
        response = await self.client.put(
            f"/admin/users/{user_id}/grants/{permission}",
            json={"effect": effect},
            headers=self.headers,
        )
        _succeeded(response, 200)

    async def drop_user_grant(self, user_id: str, permission: str) -> None:
        response = await self.client.delete(
            f"/admin/users/{user_id}/grants/{permission}", headers=self.headers
        )
        _succeeded(response, 204)

    async def permissions(self, user_id: str) -> list[str]:
        response = await self.client.get(
            f"/admin/users/{user_id}/permissions", headers=self.headers
        )
        assert response.status_code == 200, response.text
        permissions: list[str] = response.json()["permissions"]
        return permissions


async def granted_user(
    admin: AuthAdmin,
    *,
    permissions: Sequence[str] = (),
    tier: str = "pro",
    tenant_id: str | None = None,
    ttl: int | None = None,
) -> tuple[KeyUser, Tokens]:
    """A new user with one API key (`admin.key_user`), each of `permissions` granted to it
    (allow), signed in with the key (`login`, session lifetime `ttl`): the user and its
    tokens, made through `admin`'s client."""
    key_user = await admin.key_user(tier=tier, tenant_id=tenant_id)
    access = AccessAdmin(admin)
    for permission in permissions:
        await access.grant_user(key_user.user_id, permission)
    return key_user, await login(admin.client, key_user.api_key, ttl=ttl)


def bearer(token: str) -> dict[str, str]:
    """An Authorization header carrying `token`."""
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class ServiceUser:
    """A user of tenant `tenant_id` (None: of no tenant), signed in, with a context token
    (`token`) for one service carrying the permissions the user was granted."""

    key_user: KeyUser
    tokens: Tokens
    tenant_id: str | None
    token: str

    @property
    def user_id(self) -> str:
        return self.key_user.user_id

    @property
    def headers(self) -> dict[str, str]:
        """The request headers that present this user's context token."""
        return bearer(self.token)


async def service_user(
    admin: AuthAdmin,
    audience: str,
    *,
    permissions: Sequence[str] = (),
    tenant_id: str | None = None,
) -> ServiceUser:
    """`granted_user` with a context token for the service `audience`, made through
    `admin`'s client: what a test of another service acts as."""
    key_user, tokens = await granted_user(admin, permissions=permissions, tenant_id=tenant_id)
    token = await context_token(admin.client, tokens, audience)
    return ServiceUser(key_user, tokens, tenant_id, token)


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
    assert response.status_code == 200, response.text
    token: str = response.json()["context_token"]
    return token


async def introspect(client: httpx.AsyncClient, token: str, *, caller: KeyUser) -> dict[str, Any]:
    """POST /auth/context-token/introspect (RFC 7662): {"active": bool, ...claims}, asked as
    a downstream service does: the form `token=...`, authenticated with the client
    credentials of `caller`'s API key (HTTP Basic)."""
    response = await client.post(
        "/auth/context-token/introspect", data={"token": token}, auth=caller.client_credentials
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert isinstance(body.get("active"), bool), response.text
    return body
