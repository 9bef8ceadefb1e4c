"""The caller's side of authorization: permission checks, quota, user-context tokens.

``POST /authz/check``, ``GET /me/permissions``, ``GET /me/quota`` and
``POST /auth/context-token`` take the user's access token (and count against the
user's API rate limit); the context tokens' introspection is apex.auth.oauth's.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from apex.auth.context import AuthContext, Principal, authenticated, get_context
from apex.auth.guard import CONTEXT_TOKEN_TYPE, guard_of, quota_of
from apex.common.http import ApiError, require_json_body

__all__ = ["router"]

router = APIRouter(dependencies=[Depends(require_json_body)])
Context = Annotated[AuthContext, Depends(get_context)]
Caller = Annotated[Principal, Depends(authenticated)]

_AUDIENCE: Final = re.compile(r"[A-Za-z0-9._:/-]{1,128}")
_CONTEXT_CLAIMS: Final = ("iss", "aud", "sub", "sid", "iat", "exp", "jti")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CheckRequest(_Body):
    permission: str = Field(min_length=1, max_length=200)


class ContextTokenRequest(_Body):
    audience: str = Field(min_length=1, max_length=128)


@router.post("/authz/check")
async def check(body: CheckRequest, caller: Caller, context: Context) -> dict[str, Any]:
    """Whether the caller's user holds ``permission`` (what other services ask)."""
    permissions = await _permissions(context, caller)
    return {"allowed": body.permission in permissions}


@router.get("/me/permissions")
async def my_permissions(caller: Caller, context: Context) -> dict[str, Any]:
    """The caller's effective permissions, sorted."""
    return {"permissions": await _permissions(context, caller)}


@router.get("/me/quota")
async def my_quota(request: Request, caller: Caller, context: Context) -> dict[str, Any]:
    """The caller's API rate limit and what is left of it (this request included)."""
    quota = quota_of(request)
    if quota is None:
        raise guard_of(context).unavailable("the rate limiter (Redis) is unreachable")
    return quota.to_json()


@router.post("/auth/context-token")
async def context_token(
    request: Request, body: ContextTokenRequest, caller: Caller, context: Context
) -> dict[str, Any]:
    """A short-lived token naming the user, its tenant, tier and permissions for ``audience``."""
    if not _AUDIENCE.fullmatch(body.audience):
        raise ApiError(
            422,
            "invalid_request",
            "audience: 1-128 letters, digits and . _ : / - (the receiving service's name)",
        )
    if body.audience == context.settings.jwt_audience:
        raise ApiError(
            422,
            "invalid_request",
            "audience: context tokens are for other services, not the access-token audience",
        )
    quota = quota_of(request)
    ttl = context.settings.context_token_ttl
    now = int(time.time())
    claims = {
        "iss": context.signer.issuer,
        "aud": body.audience,
        "sub": caller.claims.subject,
        "tid": caller.claims.tenant_id,
        "tier": quota.tier if quota is not None else caller.claims.tier,
        "sid": caller.session.id,
        "azp": caller.session.id,
        "perms": await _permissions(context, caller),
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
    }
    token = context.signer.sign(claims, typ=CONTEXT_TOKEN_TYPE)
    return {"context_token": token, "token_type": "Bearer", "expires_in": ttl}


async def _permissions(context: AuthContext, caller: Principal) -> list[str]:
    guard = guard_of(context)
    return await guard.permissions.get(caller.claims.subject, cached=not guard.resilience.degraded)
