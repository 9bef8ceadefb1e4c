"""The OAuth 2.0 face of apex.auth: the token endpoint, its metadata, introspection.

- ``POST /auth/token`` takes two requests. The JSON ``{"api_key", "ttl"?}`` exchange
  opens a session and answers an access and a refresh token. A form-encoded OAuth 2.0
  token request with ``grant_type=client_credentials`` (RFC 6749 section 4.4), the API key
  authenticating as the client (apex.auth.clients), answers section 5.1's
  ``access_token``, ``token_type``, ``expires_in`` and ``scope`` (a subset of the key's
  scopes may be asked for), no refresh token (section 4.4.3): its session ends with the
  access token. Errors follow section 5.2. Both draw on the key's exchange limit.
- ``GET /.well-known/oauth-authorization-server``: RFC 8414 metadata. The issuer is
  APEX_PUBLIC_URL, the URL clients reach the service at.
- ``POST /auth/context-token/introspect``: RFC 7662 introspection of context tokens. The
  token comes as the form parameter ``token`` (or in a JSON body); the caller
  authenticates with an API key's client credentials or a Bearer access token (section
  2.1); the answer is ``{"active": false}`` for anything not valid now, else the claims
  with ``token_type`` "Bearer" (what the token was issued as, RFC 6749 section 7.1).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Final, TypeVar

import asyncpg
import jwt
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from apex.auth import audit, clients, keys
from apex.auth.context import AuthContext, authenticated, get_context
from apex.auth.guard import CONTEXT_TOKEN_TYPE, guard_of
from apex.auth.resilience import REDIS_DOWN
from apex.auth.sessions import Session
from apex.auth.tokens import ALGORITHM
from apex.common.challenges import bearer_challenge
from apex.common.http import ApiError

__all__ = ["router", "token_pair"]

log = logging.getLogger(__name__)

router = APIRouter()
Context = Annotated[AuthContext, Depends(get_context)]

METADATA_PATH: Final = "/.well-known/oauth-authorization-server"
GRANT: Final = "client_credentials"
# RFC 6749 section 5.1: token responses must not be cached.
NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_CONTEXT_CLAIMS: Final = ("iss", "aud", "sub", "sid", "iat", "exp", "jti")
# Far beyond any context token we sign: longer ones are not ours.
MAX_TOKEN_LENGTH: Final = 16_384
_Model = TypeVar("_Model", bound=BaseModel)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenRequest(_Body):
    api_key: str = Field(max_length=256)
    # Strict: "60" or true are mistakes worth a 422, not something to coerce.
    ttl: StrictInt | None = Field(default=None, ge=1)


class IntrospectRequest(_Body):
    token: str = Field(max_length=MAX_TOKEN_LENGTH)


# -- the token endpoint -----------------------------------------------------------------


@router.post("/auth/token")
async def token(request: Request, context: Context) -> JSONResponse:
    """Trade an API key for tokens: the JSON exchange, or an OAuth client-credentials grant."""
    kind = clients.body_kind(request)
    if kind == clients.FORM:
        return await _client_credentials(request, context)
    if kind not in (clients.JSON, None):
        raise ApiError(
            415,
            "unsupported_media_type",
            'send application/json ({"api_key"}) or an OAuth 2.0 token request '
            "(application/x-www-form-urlencoded)",
        )
    body = await _json_body(request, TokenRequest)
    access_ttl = context.settings.jwt_access_ttl
    ttl = min(body.ttl or access_ttl, access_ttl)
    async with context.pool.acquire() as conn:
        try:
            owner = await clients.verify_api_key(conn, body.api_key)
            access_token, refresh_token, session = await _open(
                context, conn, owner, ttl=ttl, scopes=owner.scopes
            )
        except clients.KeyRefused as exc:
            raise ApiError(401, "invalid_api_key", exc.detail) from None
    return JSONResponse(token_pair(access_token, refresh_token, ttl, session.id))


async def _client_credentials(request: Request, context: Context) -> JSONResponse:
    """RFC 6749 section 4.4: the API key authenticates as the client; an access token."""
    form = await clients.read_form(request)
    grant = form.get("grant_type")
    if not grant:
        raise ApiError(400, "invalid_request", "grant_type is required")
    if grant != GRANT:
        raise ApiError(
            400, "unsupported_grant_type", f"this endpoint grants {GRANT} only, not {grant[:40]!r}"
        )
    client = clients.presented_client(request, form)
    if client is None:
        raise clients.invalid_client(
            "authenticate as the client: HTTP Basic (client_id:client_secret) or both in the form"
        )
    ttl = context.settings.jwt_access_ttl
    async with context.pool.acquire() as conn:
        owner = await clients.authenticate(conn, client)
        scopes = _granted(form.get("scope"), owner.scopes)
        try:
            access_token, _, _ = await _open(
                context, conn, owner, ttl=ttl, scopes=scopes, session_ttl=ttl, grant=GRANT
            )
        except clients.KeyRefused as exc:
            raise clients.invalid_client(f"client authentication failed: {exc.detail}") from None
    answer: dict[str, Any] = {
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": ttl,
    }
    if scopes:
        answer["scope"] = " ".join(scopes)
    return JSONResponse(answer, headers=NO_STORE)


def _granted(requested: str | None, allowed: list[str]) -> list[str]:
    """The scopes a token gets: the key's, or the subset the request names (section 3.3)."""
    if requested is None or not requested.strip():
        return list(allowed)
    wanted = list(dict.fromkeys(requested.split()))
    unknown = [scope for scope in wanted if scope not in allowed]
    if unknown:
        raise ApiError(
            400, "invalid_scope", f"scopes this API key does not have: {' '.join(unknown)[:200]}"
        )
    return wanted


async def _open(
    context: AuthContext,
    conn: asyncpg.Connection,
    owner: keys.KeyOwner,
    *,
    ttl: float,
    scopes: list[str],
    session_ttl: float | None = None,
    grant: str | None = None,
) -> tuple[str, str, Session]:
    """A session of ``owner``'s key within its exchange limit; its access and refresh token."""
    limit = context.settings.auth_rate_limits[owner.tier]
    decision = await context.limiter.hit(f"auth:{owner.tier}:{owner.key_id}", limit)
    if not decision.allowed:
        await clients.rejected(conn, owner, "rate_limited")
        raise ApiError(
            429,
            "rate_limited",
            f"more than {limit.count} token exchanges in {limit.window:g} s "
            f"for this API key ({owner.tier} tier)",
            headers={"Retry-After": str(decision.retry_after)},
        )
    tenant_id = str(owner.tenant_id) if owner.tenant_id is not None else None
    session, refresh_token = await context.sessions.create(
        user_id=str(owner.user_id),
        api_key_id=owner.key_id,
        tenant_id=tenant_id,
        scopes=scopes,
        access_ttl=ttl,
        ttl=session_ttl,
    )
    async with conn.transaction():
        # Checked again after the session exists: a revocation that committed
        # meanwhile may have missed this session in its index sweep.
        if not await keys.mark_used(conn, owner.key_id):
            await context.sessions.revoke(session.id)
            raise clients.KeyRefused("API key revoked")
        detail: dict[str, Any] = {"session_id": session.id}
        if grant is not None:
            detail["grant_type"] = grant
        await audit.record(
            conn,
            "api_key.used",
            subject=owner.key_id,
            actor=audit.key_actor(owner.key_id),
            user_id=owner.user_id,
            detail=detail,
        )
    access_token = context.signer.issue(
        subject=str(owner.user_id),
        session_id=session.id,
        tenant_id=tenant_id,
        tier=owner.tier,
        scopes=scopes,
        api_key_id=owner.key_id,
        ttl=ttl,
    )
    return access_token, refresh_token, session


def token_pair(
    access_token: str, refresh_token: str, ttl: float, session_id: str
) -> dict[str, Any]:
    """The answer of the JSON exchange and of a refresh."""
    return {
        "access_token": access_token,
        "refresh_token": refresh_token,
        "token_type": "Bearer",
        "expires_in": ttl,
        "session_id": session_id,
    }


async def _json_body(request: Request, model: type[_Model]) -> _Model:
    """The JSON body as ``model``: the same 400/422 answers as a FastAPI body parameter."""
    raw = await request.body()
    if not raw:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


# -- RFC 8414 metadata ------------------------------------------------------------------


@router.get(METADATA_PATH)
async def metadata(context: Context) -> JSONResponse:
    """What a standard OAuth 2.0 client needs to find and use the token endpoint."""
    issuer = context.settings.public_url
    document = {
        "issuer": issuer,
        "token_endpoint": f"{issuer}/auth/token",
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "grant_types_supported": [GRANT],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        # No authorization endpoint: clients get tokens for themselves, not for users.
        "response_types_supported": [],
    }
    return JSONResponse(document, headers={"Cache-Control": "public, max-age=300"})


# -- RFC 7662 introspection of context tokens -------------------------------------------


@router.post("/auth/context-token/introspect")
async def introspect(request: Request, context: Context) -> JSONResponse:
    """``{"active": true, ...claims}`` for a valid context token of a live session."""
    kind = clients.body_kind(request)
    if kind == clients.FORM:
        form = await clients.read_form(request)
        await _authenticate_caller(request, context, form)
        if "token" not in form:
            raise ApiError(400, "invalid_request", "the token parameter is required")
        presented = form["token"]
    elif kind in (clients.JSON, None):
        await _authenticate_caller(request, context, {})
        presented = (await _json_body(request, IntrospectRequest)).token
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the token as application/x-www-form-urlencoded (token=...) or JSON",
        )
    answer = await _introspection(context, presented)
    return JSONResponse(answer, headers=NO_STORE)


async def _authenticate_caller(
    request: Request, context: AuthContext, form: dict[str, str]
) -> None:
    """Section 2.1: API key client credentials or a Bearer access token of a live session."""
    client = clients.presented_client(request, form)
    if client is not None:
        async with context.pool.acquire() as conn:
            await clients.authenticate(conn, client)
        return
    scheme, _, _ = request.headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer":
        await authenticated(request)
        return
    raise ApiError(
        401,
        "invalid_client",
        "authenticate: an API key's client credentials (HTTP Basic) or a Bearer access token",
        headers={"WWW-Authenticate": f"{clients.BASIC_CHALLENGE}, {bearer_challenge(None)}"},
    )


async def _introspection(context: AuthContext, presented: str) -> dict[str, Any]:
    claims = _verified_context_claims(context, presented)
    if claims is None:
        return {"active": False}
    guard = guard_of(context)
    session_id = str(claims["sid"])
    if guard.resilience.is_revoked(session_id):
        return {"active": False}
    try:
        session = await context.sessions.get(session_id)
    except REDIS_DOWN as exc:
        guard.resilience.mark_down(exc)
        raise guard.unavailable("the session store (Redis) is unreachable") from None
    if session is None or session.user_id != claims["sub"]:
        return {"active": False}
    return {**claims, "active": True, "token_type": "Bearer"}


def _verified_context_claims(context: AuthContext, presented: str) -> dict[str, Any] | None:
    signer = context.signer
    if len(presented) > MAX_TOKEN_LENGTH:
        return None
    try:
        header = jwt.get_unverified_header(presented)
        if header.get("typ") != CONTEXT_TOKEN_TYPE or header.get("kid") != signer.kid:
            return None
        claims: dict[str, Any] = jwt.decode(
            presented,
            signer.public_key,
            algorithms=[ALGORITHM],
            issuer=signer.issuer,
            options={"require": list(_CONTEXT_CLAIMS), "verify_aud": False},
        )
    except jwt.PyJWTError:
        return None
    if not isinstance(claims.get("sub"), str) or not isinstance(claims.get("sid"), str):
        return None
    return claims
