"""The caller's side of apex.auth: token exchange, refresh, logout, ``/me``, sessions."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from apex.auth import audit, keys, logins
from apex.auth.context import AuthContext, Principal, authenticated, get_context
from apex.auth.resilience import REDIS_DOWN
from apex.auth.sessions import is_session_id, parse_refresh_token
from apex.common.http import ApiError, require_json_body

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(dependencies=[Depends(require_json_body)])

Context = Annotated[AuthContext, Depends(get_context)]
Caller = Annotated[Principal, Depends(authenticated)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenRequest(_Body):
    api_key: str = Field(max_length=256)
    # Strict: "60" or true are mistakes worth a 422, not something to coerce.
    ttl: StrictInt | None = Field(default=None, ge=1)


class RefreshRequest(_Body):
    refresh_token: str = Field(max_length=256)


@router.post("/auth/token")
async def exchange_api_key(body: TokenRequest, context: Context) -> dict[str, Any]:
    """Trade an API key for an access token and a refresh token (a new session)."""
    parsed = keys.parse_api_key(body.api_key)
    if parsed is None:
        raise _invalid_key("malformed API key")
    key_id, secret = parsed
    async with context.pool.acquire() as conn:
        owner = await keys.find_owner(conn, key_id)
        if owner is None or not keys.verify_secret(secret, owner.secret_sha256):
            if owner is None:
                # Same hashing and comparison as a wrong secret costs.
                keys.verify_secret(secret, None)
            else:
                await _rejected(conn, owner, "wrong_secret")
            # One message for unknown keys and wrong secrets: a caller learns nothing
            # about which key ids exist.
            raise _invalid_key("unknown API key or wrong secret")
        if owner.revoked:
            await _rejected(conn, owner, "revoked")
            raise _invalid_key("API key revoked")

        limit = context.settings.auth_rate_limits[owner.tier]
        decision = await context.limiter.hit(f"auth:{owner.tier}:{key_id}", limit)
        if not decision.allowed:
            await _rejected(conn, owner, "rate_limited")
            raise ApiError(
                429,
                "rate_limited",
                f"more than {limit.count} token exchanges in {limit.window:g} s "
                f"for this API key ({owner.tier} tier)",
                headers={"Retry-After": str(decision.retry_after)},
            )

        ttl = min(body.ttl or context.settings.jwt_access_ttl, context.settings.jwt_access_ttl)
        tenant_id = str(owner.tenant_id) if owner.tenant_id is not None else None
        session, refresh_token = await context.sessions.create(
            user_id=str(owner.user_id),
            api_key_id=key_id,
            tenant_id=tenant_id,
            scopes=owner.scopes,
            access_ttl=ttl,
        )
        async with conn.transaction():
            # Checked again after the session exists: a revocation that committed
            # meanwhile may have missed this session in its index sweep.
            if not await keys.mark_used(conn, key_id):
                await context.sessions.revoke(session.id)
                raise _invalid_key("API key revoked")
            await audit.record(
                conn,
                "api_key.used",
                subject=key_id,
                actor=audit.key_actor(key_id),
                user_id=owner.user_id,
                detail={"session_id": session.id},
            )
    access_token = context.signer.issue(
        subject=str(owner.user_id),
        session_id=session.id,
        tenant_id=tenant_id,
        tier=owner.tier,
        scopes=owner.scopes,
        api_key_id=key_id,
        ttl=ttl,
    )
    return _token_pair(access_token, refresh_token, ttl, session.id)


@router.post("/auth/refresh")
async def refresh(body: RefreshRequest, context: Context) -> dict[str, Any]:
    """Rotate a refresh token: the new pair replaces it; presenting it again ends the session."""
    parsed = parse_refresh_token(body.refresh_token)
    if parsed is None:
        raise _invalid_refresh("malformed refresh token")
    result = await context.sessions.rotate(*parsed)
    if result.status == "reused":
        if result.session is not None:
            await context.session_revoked(
                result.session, actor=audit.SYSTEM, reason="refresh_reused"
            )
        raise ApiError(
            401, "refresh_reused", "refresh token already used: the session has been revoked"
        )
    session, refresh_token = result.session, result.refresh_token
    if result.status != "ok" or session is None or refresh_token is None:
        raise _invalid_refresh("unknown, expired or revoked refresh token")
    if session.api_key_id is None:  # an interactive login (issue 3): no key to check
        return await logins.refresh_interactive(context, session, refresh_token)

    async with context.pool.acquire() as conn:
        owner = await keys.find_owner(conn, session.api_key_id)
    if owner is None or owner.revoked or str(owner.user_id) != session.user_id:
        if await context.sessions.revoke(session.id) is not None:
            await context.session_revoked(session, actor=audit.SYSTEM, reason="api_key_revoked")
        raise _invalid_refresh("the API key of this session has been revoked")
    # The tier and tenant are read afresh, so an upgrade shows in the next access token.
    access_token = context.signer.issue(
        subject=session.user_id,
        session_id=session.id,
        tenant_id=str(owner.tenant_id) if owner.tenant_id is not None else None,
        tier=owner.tier,
        scopes=session.scopes,
        api_key_id=session.api_key_id,
        ttl=session.access_ttl,
    )
    return _token_pair(access_token, refresh_token, session.access_ttl, session.id)


@router.post("/auth/logout", status_code=204)
async def logout(caller: Caller, context: Context) -> Response:
    """End the caller's session."""
    session = await context.sessions.revoke(caller.session.id)
    if session is None:
        raise ApiError(401, "session_revoked", "the session of this token has ended")
    await context.session_revoked(session, actor=audit.user_actor(session.user_id), reason="logout")
    return Response(status_code=204)


@router.get("/me")
async def me(caller: Caller, context: Context) -> dict[str, Any]:
    """Who the caller is: the user behind the token, its session and the key it came from."""
    async with context.pool.acquire() as conn:
        row = await conn.fetchrow(
            # Sessions of interactive logins have no key ($2 NULL): only the user counts.
            "SELECT u.email, u.tier, u.tenant_id, "
            "($2::text IS NOT NULL AND (k.id IS NULL OR k.revoked_at IS NOT NULL)) AS revoked "
            "FROM users u LEFT JOIN api_keys k ON k.user_id = u.id AND k.id = $2 "
            "WHERE u.id = $1",
            uuid.UUID(caller.session.user_id),
            caller.session.api_key_id,
        )
    if row is None or row["revoked"]:
        # Belt and braces: revoking a key ends its sessions, but a session must
        # never outlive its key or user even if that sweep was interrupted. PostgreSQL
        # has the last word: with Redis down the answer is still 401, the clean-up waits.
        try:
            if await context.sessions.revoke(caller.session.id) is not None:
                await context.session_revoked(
                    caller.session, actor=audit.SYSTEM, reason="api_key_revoked"
                )
        except REDIS_DOWN as exc:
            log.warning(
                "session %s of a revoked key not ended in Redis: %r", caller.session.id, exc
            )
        raise ApiError(
            401, "session_revoked", "the API key or user of this session no longer exists"
        )
    return {
        "user_id": caller.session.user_id,
        "email": row["email"],
        "tier": row["tier"],
        "tenant_id": str(row["tenant_id"]) if row["tenant_id"] is not None else None,
        "session_id": caller.session.id,
        "api_key_id": caller.session.api_key_id,
        "scopes": caller.session.scopes,
        "auth_method": caller.session.method,
        "mfa": "otp" in caller.session.amr,
    }


@router.get("/sessions")
async def list_sessions(caller: Caller, context: Context) -> dict[str, Any]:
    """The caller's live sessions, oldest first."""
    sessions = await context.sessions.list_for_user(caller.session.user_id)
    return {"sessions": [s.to_json(current_id=caller.session.id) for s in sessions]}


@router.delete("/sessions/{session_id}", status_code=204)
async def delete_session(session_id: str, caller: Caller, context: Context) -> Response:
    """End one of the caller's sessions."""
    session = await context.sessions.get(session_id) if is_session_id(session_id) else None
    # Another user's session is "not found", not "forbidden": ids are not to be probed.
    if session is None or session.user_id != caller.session.user_id:
        raise ApiError(404, "not_found", f"no session {session_id[:64]!r}")
    revoked = await context.sessions.revoke(session_id)
    if revoked is not None:
        await context.session_revoked(
            revoked, actor=audit.user_actor(revoked.user_id), reason="deleted"
        )
    return Response(status_code=204)


def _token_pair(access_token: str, refresh_token: str, ttl: int, session_id: str) -> dict[str, Any]:
    return {
        "access_token": access_token,
        "refresh_token": refresh_token,
        "token_type": "Bearer",
        "expires_in": ttl,
        "session_id": session_id,
    }


async def _rejected(conn: asyncpg.Connection, owner: keys.KeyOwner, reason: str) -> None:
    await audit.record(
        conn,
        "api_key.rejected",
        subject=owner.key_id,
        actor=audit.key_actor(owner.key_id),
        user_id=owner.user_id,
        detail={"reason": reason},
    )


def _invalid_key(detail: str) -> ApiError:
    return ApiError(401, "invalid_api_key", detail)


def _invalid_refresh(detail: str) -> ApiError:
    return ApiError(401, "invalid_refresh_token", detail)
