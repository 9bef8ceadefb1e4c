"""The admin API (``/admin/*``, bearer APEX_ADMIN_TOKEN): users, API keys, audit trail,
and the removal of a test run's users (by their reserved ``.invalid`` e-mail domain)."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from apex.auth import audit, keys, passwords, seats, users
from apex.auth.context import AuthContext, get_context, require_admin
from apex.common.http import ApiError, require_json_body
from apex.common.shared_config import config_report
from apex.data.tenancy import tenant_transaction

__all__ = ["router"]

router = APIRouter(
    prefix="/admin", dependencies=[Depends(require_admin), Depends(require_json_body)]
)

Tier = Literal["free", "pro", "enterprise"]
Context = Annotated[AuthContext, Depends(get_context)]
_SCOPE = re.compile(r"[A-Za-z0-9:._*/-]{1,64}")


class _Body(BaseModel):
    # Unknown fields are refused: a misspelt "teir" must not silently do nothing.
    model_config = ConfigDict(extra="forbid")


class CreateUser(_Body):
    email: str = Field(max_length=users.MAX_EMAIL_LENGTH)
    tier: Tier
    tenant_id: uuid.UUID | None = None
    # Issue 3: optional password (login by e-mail) and phone (E.164, for SMS codes).
    password: str | None = Field(default=None, max_length=passwords.MAX_PASSWORD_LENGTH)
    phone: str | None = Field(default=None, pattern=r"^\+[1-9][0-9]{6,14}$")

    @field_validator("password")
    @classmethod
    def _password(cls, value: str | None) -> str | None:
        return passwords.check_password_policy(value) if value is not None else None

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return users.normalize_email(value)


class UpdateUser(_Body):
    tier: Tier


class CreateApiKey(_Body):
    name: str = Field(min_length=1, max_length=100)
    scopes: list[str] = Field(default_factory=list, max_length=50)

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: list[str]) -> list[str]:
        for scope in value:
            if not _SCOPE.fullmatch(scope):
                raise ValueError("a scope is 1-64 characters of letters, digits and : . _ * / -")
        return list(dict.fromkeys(value))


@router.get("/config")
async def config(context: Context) -> dict[str, Any]:
    """The shared settings this instance runs with, secrets as fingerprints (003)."""
    return config_report("apex.auth", context.settings)


@router.post("/users", status_code=201)
async def create_user(body: CreateUser, context: Context) -> dict[str, Any]:
    """Create a user."""
    hasher = passwords.hasher(context.settings.password_hash_cost)
    password_hash = await hasher.hash(body.password) if body.password else None
    async with context.pool.acquire() as conn, conn.transaction():
        if context.settings.plan_limits and body.tenant_id is not None:
            await seats.take(conn, context.redis, context.settings.redis_prefix, body.tenant_id)
        try:
            user = await users.create_user(
                conn,
                body.email,
                body.tier,
                body.tenant_id,
                password_hash=password_hash,
                phone=body.phone,
            )
        except users.DuplicateEmail:
            raise ApiError(
                409, "duplicate_email", "a user with this e-mail address exists"
            ) from None
        await audit.record(
            conn,
            "user.created",
            subject=str(user.id),
            actor=audit.ADMIN,
            user_id=user.id,
            detail={"tier": user.tier, "tenant_id": user.to_json()["tenant_id"]},
        )
    return user.to_json()


@router.delete("/users")
async def delete_test_users(
    context: Context,
    email_domain: Annotated[str, Query(min_length=1, max_length=253)],
) -> dict[str, Any]:
    """Delete every user whose e-mail is in `email_domain` or one of its subdomains, which
    must be a domain under the reserved TLD .invalid (a test run's namespace); their keys,
    identities, team memberships, grants and reset tokens go with them (ON DELETE
    CASCADE), and so do the teams and settings of the tenants no user is left in."""
    domain = email_domain.lower()
    if not users.is_test_domain(domain):
        raise ApiError(
            400, "invalid_domain", "only a domain under the reserved TLD .invalid can be deleted"
        )
    async with context.pool.acquire() as conn:
        async with conn.transaction():
            deleted, tenants = await users.delete_users_in_domain(conn, domain)
            await conn.execute("DELETE FROM teams WHERE tenant_id = ANY($1::uuid[])", tenants)
            await audit.record(
                conn,
                "users.deleted",
                subject=domain,
                actor=audit.ADMIN,
                detail={"email_domain": domain, "count": deleted, "tenants": len(tenants)},
            )
        # One transaction per tenant: the settings are visible only as that tenant (RLS),
        # whose role lasts until its transaction ends.
        for tenant in tenants:
            async with tenant_transaction(conn, tenant):
                await conn.execute("DELETE FROM tenant_settings")
    return {"deleted": deleted, "tenants": len(tenants)}


@router.get("/users/{user_id}")
async def get_user(user_id: str, context: Context) -> dict[str, Any]:
    """One user."""
    async with context.pool.acquire() as conn:
        user = await users.get_user(conn, _user_id(user_id))
    if user is None:
        raise _no_user(user_id)
    return user.to_json()


@router.patch("/users/{user_id}")
async def update_user(user_id: str, body: UpdateUser, context: Context) -> dict[str, Any]:
    """Change a user's tier (its rate limit applies from the next token exchange)."""
    async with context.pool.acquire() as conn:
        user = await users.set_tier(conn, _user_id(user_id), body.tier)
    if user is None:
        raise _no_user(user_id)
    return user.to_json()


@router.post("/users/{user_id}/api-keys", status_code=201)
async def create_api_key(user_id: str, body: CreateApiKey, context: Context) -> dict[str, Any]:
    """Create an API key; the response is the only place its plaintext ever appears."""
    uid = _user_id(user_id)
    async with context.pool.acquire() as conn, conn.transaction():
        if await users.get_user(conn, uid) is None:
            raise _no_user(user_id)
        key, plaintext = await keys.create_api_key(conn, uid, body.name, body.scopes)
        await audit.record(
            conn,
            "api_key.created",
            subject=key.id,
            actor=audit.ADMIN,
            user_id=uid,
            detail={"name": key.name, "scopes": key.scopes},
        )
    return {
        "id": key.id,
        "api_key": plaintext,
        "name": key.name,
        "scopes": key.scopes,
        "user_id": str(uid),
    }


@router.get("/api-keys/{key_id}")
async def get_api_key(key_id: str, context: Context) -> dict[str, Any]:
    """An API key's metadata (never its secret or hash)."""
    key = None
    if keys.is_key_id(key_id):
        async with context.pool.acquire() as conn:
            key = await keys.get_api_key(conn, key_id)
    if key is None:
        raise _no_key(key_id)
    return key.to_json()


@router.delete("/api-keys/{key_id}", status_code=204)
async def revoke_api_key(key_id: str, context: Context) -> Response:
    """Revoke an API key and end every session created with it."""
    if not keys.is_key_id(key_id):
        raise _no_key(key_id)
    async with context.pool.acquire() as conn, conn.transaction():
        key, newly_revoked = await keys.revoke_api_key(conn, key_id)
        if key is None:
            raise _no_key(key_id)
        if newly_revoked:
            await audit.record(
                conn, "api_key.revoked", subject=key_id, actor=audit.ADMIN, user_id=key.user_id
            )
    # After the commit: a token exchange racing this revocation either sees the key
    # revoked or has already indexed its session, which this sweep then ends.
    for session in await context.sessions.revoke_for_key(key_id):
        await context.session_revoked(session, actor=audit.ADMIN, reason="api_key_revoked")
    return Response(status_code=204)


@router.get("/audit")
async def audit_events(
    context: Context,
    subject: Annotated[str, Query(min_length=1, max_length=100)],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """The audit events about a user id or an API key id, oldest first."""
    async with context.pool.acquire() as conn:
        events = await audit.events_for(conn, subject, limit=limit)
    return {"events": events}


def _user_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        # A malformed id names no user: same answer as an unknown one.
        raise _no_user(text) from None


def _no_user(user_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no user {user_id[:64]!r}")


def _no_key(key_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no API key {key_id[:64]!r}")
