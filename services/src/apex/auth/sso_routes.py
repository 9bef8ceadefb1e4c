"""Single sign-on routes: OIDC (``/auth/oidc/*``) and SAML 2.0 (``/auth/saml/*``).

Both end the same way: just-in-time provisioning of the user, IdP groups -> team
memberships, then tokens (or an mfa challenge when the user has 2FA).

The OIDC login binds its state to the browser with the cookie ``__Host-apex-oidc``
(Secure, HttpOnly, Path=/, SameSite=Lax so the IdP's redirect back carries it): a random
value the browser keeps for a while (several tabs may log in at once), checked at the
callback. Browsers keep Secure cookies only from https origins (and localhost), so
APEX_PUBLIC_URL is https in any real deployment.
"""

from __future__ import annotations

import email.message
import functools
import logging
import re
import secrets
from typing import Annotated, Any, Final
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse

from apex.auth import identities, seats
from apex.auth.context import AuthContext, get_context
from apex.auth.identities import ExternalProfile, ProvisioningError
from apex.auth.logins import IdentityServices, finish_login, get_identity
from apex.auth.oidc import (
    STATE_TTL,
    IdpError,
    IdpUnavailable,
    IdTokenError,
    InvalidState,
    OidcClient,
)
from apex.auth.saml import SamlError, SamlReplay, SamlServiceProvider, SamlUnavailable
from apex.common.http import ApiError

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter()

Context = Annotated[AuthContext, Depends(get_context)]
Identity = Annotated[IdentityServices, Depends(get_identity)]

BINDING_COOKIE: Final = "__Host-apex-oidc"
_BINDING = re.compile(r"[A-Za-z0-9_-]{43}")


# --- OIDC ---------------------------------------------------------------------------


def _oidc(context: AuthContext, identity: IdentityServices) -> OidcClient:
    settings = context.settings
    if not (settings.idp_issuer and settings.idp_client_id and settings.idp_client_secret):
        raise ApiError(503, "not_configured", "OIDC login is not configured (APEX_IDP_*)")
    if identity.oidc is None:
        identity.oidc = OidcClient(
            identity.http,
            context.redis,
            prefix=settings.redis_prefix,
            issuer=settings.idp_issuer,
            client_id=settings.idp_client_id,
            client_secret=settings.idp_client_secret,
            redirect_uri=f"{settings.public_url}/auth/oidc/callback",
        )
    client: OidcClient = identity.oidc
    return client


@router.get("/auth/oidc/login")
async def oidc_login(request: Request, context: Context, identity: Identity) -> RedirectResponse:
    """Redirect to the IdP's authorization endpoint (code flow, PKCE S256, state, nonce),
    the state bound to this browser's binding cookie (set here if it has none)."""
    client = _oidc(context, identity)
    binding = request.cookies.get(BINDING_COOKIE, "")
    if not _BINDING.fullmatch(binding):
        binding = secrets.token_urlsafe(32)
    try:
        url = await client.authorization_url(binding)
    except IdpUnavailable as exc:
        raise _idp_unavailable(exc) from None
    response = RedirectResponse(url, status_code=302)
    response.set_cookie(
        BINDING_COOKIE,
        binding,
        max_age=STATE_TTL,
        path="/",
        secure=True,
        httponly=True,
        samesite="lax",
    )
    return response


@router.get("/auth/oidc/callback")
async def oidc_callback(
    request: Request,
    context: Context,
    identity: Identity,
    code: Annotated[str | None, Query(max_length=2048)] = None,
    state: Annotated[str | None, Query(max_length=256)] = None,
    error: Annotated[str | None, Query(max_length=256)] = None,
    error_description: Annotated[str | None, Query(max_length=1024)] = None,
) -> dict[str, Any]:
    """Redeem the code, verify the id_token, provision the user: tokens or mfa_required."""
    client = _oidc(context, identity)
    try:
        pending = await client.take_state(state or "", request.cookies.get(BINDING_COOKIE, ""))
    except InvalidState as exc:
        raise ApiError(400, "invalid_state", str(exc)) from None
    if error:
        detail = f"the IdP answered {error}" + (
            f": {error_description}" if error_description else ""
        )
        raise ApiError(401, "idp_error", detail[:300])
    if not code:
        raise ApiError(400, "invalid_request", "the callback carries no code")
    try:
        claims = await client.exchange(code, pending)
    except IdpUnavailable as exc:
        raise _idp_unavailable(exc) from None
    except IdpError as exc:
        raise ApiError(401, "idp_error", str(exc)) from None
    except IdTokenError as exc:
        raise ApiError(401, "invalid_id_token", str(exc)) from None
    groups = claims.get("groups") or []
    if isinstance(groups, str):
        groups = [groups]
    profile = ExternalProfile(
        provider="oidc",
        subject=str(claims["sub"]),
        email=claims.get("email") if isinstance(claims.get("email"), str) else None,
        groups=tuple(str(g) for g in groups if isinstance(g, str)),
        tenant=claims.get("tenant") if isinstance(claims.get("tenant"), str) else None,
        # Only the JSON true: a missing claim, null or the string "false" is not a yes.
        email_verified=claims.get("email_verified") is True,
    )
    return await _complete(
        context,
        identity,
        profile,
        "oidc",
        trusted_domains=context.settings.idp_trusted_domains,
        error_code="invalid_id_token",
    )


# --- SAML ---------------------------------------------------------------------------


def _saml(context: AuthContext, identity: IdentityServices) -> SamlServiceProvider:
    settings = context.settings
    if not settings.saml_idp_metadata_url:
        raise ApiError(503, "not_configured", "SAML login is not configured (APEX_SAML_*)")
    if identity.saml is None:
        identity.saml = SamlServiceProvider(
            identity.http,
            context.redis,
            prefix=settings.redis_prefix,
            metadata_url=settings.saml_idp_metadata_url,
            sp_entity_id=settings.saml_sp_entity_id,
            acs_url=f"{settings.public_url}/auth/saml/acs",
        )
    provider: SamlServiceProvider = identity.saml
    return provider


@router.get("/auth/saml/login")
async def saml_login(
    context: Context,
    identity: Identity,
    relay_state: Annotated[str | None, Query(max_length=80)] = None,
) -> RedirectResponse:
    """Redirect to the IdP's SSO URL with an AuthnRequest (HTTP-Redirect binding)."""
    provider = _saml(context, identity)
    try:
        url = await provider.login_url(relay_state or secrets.token_urlsafe(16))
    except SamlUnavailable as exc:
        raise _idp_unavailable(exc) from None
    return RedirectResponse(url, status_code=302)


@router.post("/auth/saml/acs")
async def saml_acs(request: Request, context: Context, identity: Identity) -> dict[str, Any]:
    """The assertion consumer service (HTTP-POST binding): tokens or mfa_required."""
    provider = _saml(context, identity)
    message = email.message.Message()
    message["content-type"] = request.headers.get("content-type", "")
    if message.get_content_type() != "application/x-www-form-urlencoded":
        raise ApiError(
            415, "unsupported_media_type", "post the form as application/x-www-form-urlencoded"
        )
    try:
        form = parse_qs((await request.body()).decode("ascii"), strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "invalid_request", "the form is not URL-encoded ASCII") from None
    saml_response = (form.get("SAMLResponse") or [""])[0]
    if not saml_response:
        raise ApiError(400, "invalid_request", "the form carries no SAMLResponse")
    try:
        assertion = await provider.verify(saml_response)
        await provider.accept(assertion)
    except SamlUnavailable as exc:
        raise _idp_unavailable(exc) from None
    except SamlReplay as exc:
        raise ApiError(401, "saml_replay", str(exc)) from None
    except SamlError as exc:
        raise ApiError(401, "invalid_saml", str(exc)) from None
    profile = ExternalProfile(
        provider="saml",
        subject=assertion.name_id,
        email=assertion.email,
        groups=assertion.groups,
        tenant=assertion.tenant,
        # SAML has no verification flag: the IdP's signed assertion is its word, and
        # linking needs the domain trust on top (apex.auth.identities).
        email_verified=True,
    )
    return await _complete(
        context,
        identity,
        profile,
        "saml",
        trusted_domains=context.settings.saml_trusted_domains,
        error_code="invalid_saml",
    )


# --- both ---------------------------------------------------------------------------


async def _complete(
    context: AuthContext,
    identity: IdentityServices,
    profile: ExternalProfile,
    method: str,
    *,
    trusted_domains: frozenset[str],
    error_code: str,
) -> dict[str, Any]:
    async with context.pool.acquire() as conn, conn.transaction():
        take_seat = None
        if context.settings.plan_limits:
            take_seat = functools.partial(
                seats.take, conn, context.redis, context.settings.redis_prefix
            )
        try:
            user = await identities.provision(
                conn, profile, trusted_domains=trusted_domains, take_seat=take_seat
            )
        except ProvisioningError as exc:
            raise ApiError(401, error_code, str(exc)) from None
        joined, left = await identities.sync_groups(
            conn, user.id, profile.groups, provider=profile.provider
        )
    if (joined or left) and context.guard is not None:
        await context.guard.permissions.invalidate([str(user.id)])
    return await finish_login(context, identity, user, method)


def _idp_unavailable(exc: Exception) -> ApiError:
    log.warning("identity provider unavailable: %s", exc)
    return ApiError(502, "idp_unavailable", str(exc)[:300])
