"""The caller's side of apex.auth: refresh, logout, ``/me``, sessions (the token exchange
is apex.auth.oauth's)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from apex.auth import audit, keys, logins
from apex.auth.context import (
    AuthContext,
    Principal,
    authenticated,
    end_orphaned_session,
    get_context,
)
from apex.auth.oauth import token_pair
from apex.auth.sessions import is_session_id, parse_refresh_token
from apex.common.http import ApiError, require_json_body

__all__ = ["router"]


router = APIRouter(dependencies=[Depends(require_json_body)])

Context = Annotated[AuthContext, Depends(get_context)]
Caller = Annotated[Principal, Depends(authenticated)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RefreshRequest(_Body):
    refresh_token: str = Field(max_length=256)


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
    return token_pair(access_token, refresh_token, session.access_ttl, session.id)


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
        # The key's case is refused by `authenticated` already; a user deleted since the
        # login is caught here (the query reads the user anyway).
        raise await end_orphaned_session(context, caller.session, "api_key_revoked")
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


def _invalid_refresh(detail: str) -> ApiError:
    return ApiError(401, "invalid_refresh_token", detail)
