"""Who is asking: the tenant, user and permissions of a request, from its context token.

Tenant routes take a context token from apex.auth (``POST /auth/context-token
{"audience": "apex-data"}``) as ``Authorization: Bearer``, verified offline with
:func:`apex.common.identity.verify_context_token` against apex.auth's JWKS (fetched from
``APEX_AUTH_URL``, cached, fetched again when a token names a key it does not hold: a
rotated key). The tenant is the token's ``tid``: none is 403 ``no_tenant``; a missing
permission is 403 ``forbidden``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Mapping
from typing import Any, Final

import httpx

from apex.common.challenges import bearer_challenge
from apex.common.http import ApiError
from apex.common.identity import ContextTokenError, verify_context_token
from apex.common.tls import client_tls_context

__all__ = ["AUDIENCE", "BILLING_READ", "BILLING_WRITE", "RUN_AGENTS", "Caller", "Verifier"]

# The audience context tokens for this service name.
AUDIENCE: Final = "apex-data"
RUN_AGENTS: Final = "agents:run"
BILLING_READ: Final = "billing:read"
# Moving credit between tenants (the contract names no permission for it).
BILLING_WRITE: Final = "billing:write"
# A token naming an unknown key refetches the JWKS at most this often (a forged kid
# must not turn every request into a request to apex.auth).
_REFETCH_INTERVAL: Final = 5.0
_JWKS_TIMEOUT: Final = 5.0


@dataclasses.dataclass(frozen=True)
class Caller:
    """The verified context of a request."""

    tenant_id: uuid.UUID
    user_id: str
    permissions: frozenset[str]

    def require(self, permission: str) -> None:
        """403 ``forbidden`` unless the caller holds ``permission``."""
        if permission not in self.permissions:
            raise ApiError(403, "forbidden", f"this needs the permission {permission}")


class Verifier:
    """Verifies context tokens for ``audience`` (default: apex.data's) against apex.auth's
    JWKS."""

    def __init__(self, auth_url: str, issuer: str, audience: str = AUDIENCE) -> None:
        self._url = f"{auth_url}/.well-known/jwks.json"
        self._issuer = issuer
        self._audience = audience
        self._jwks: Mapping[str, Any] | None = None
        self._fetched_at = -_REFETCH_INTERVAL
        self._lock = asyncio.Lock()
        self._http = httpx.AsyncClient(timeout=_JWKS_TIMEOUT, verify=client_tls_context())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def probe(self, timeout: float) -> str:
        """The health check of apex.auth as this service needs it: ``ok`` when its JWKS
        answers 200 within ``timeout`` seconds, else ``down: <why>`` (the keys cached
        from an earlier fetch still verify tokens meanwhile)."""
        try:
            response = await self._http.get(self._url, timeout=timeout)
        except httpx.HTTPError as exc:
            return f"down: {type(exc).__name__}"
        return "ok" if response.status_code == 200 else f"down: HTTP {response.status_code}"

    async def caller(self, token: str) -> Caller:
        """The caller a context token names; ApiError 401/403/503 otherwise."""
        claims = await self._claims(token)
        tenant = claims.get("tid")
        if tenant is None:
            raise ApiError(403, "no_tenant", "the context token names no tenant (tid)")
        try:
            tenant_id = uuid.UUID(str(tenant))
        except ValueError:
            raise ApiError(403, "no_tenant", "the context token's tid is not a tenant id") from None
        perms = claims.get("perms") or []
        if not isinstance(perms, list) or not all(isinstance(p, str) for p in perms):
            raise _refused("the context token's perms must be a list of strings")
        return Caller(tenant_id, str(claims["sub"]), frozenset(perms))

    async def _claims(self, token: str) -> dict[str, Any]:
        jwks = await self._keys(refresh=False)
        try:
            return verify_context_token(token, jwks, self._audience, issuer=self._issuer)
        except ContextTokenError as exc:
            if "unknown key" not in str(exc):
                raise _refused(str(exc)) from None
        # A key apex.auth rotated in after our last fetch: fetch again (rate-limited).
        jwks = await self._keys(refresh=True)
        try:
            return verify_context_token(token, jwks, self._audience, issuer=self._issuer)
        except ContextTokenError as exc:
            raise _refused(str(exc)) from None

    async def _keys(self, *, refresh: bool) -> Mapping[str, Any]:
        async with self._lock:
            stale = refresh and time.monotonic() - self._fetched_at >= _REFETCH_INTERVAL
            if self._jwks is None or stale:
                try:
                    response = await self._http.get(self._url)
                    response.raise_for_status()
                    jwks = response.json()
                except (httpx.HTTPError, ValueError) as exc:
                    if self._jwks is not None:
                        return self._jwks
                    raise ApiError(
                        503,
                        "auth_unavailable",
                        f"apex.auth's keys could not be fetched: {type(exc).__name__}",
                    ) from None
                if not isinstance(jwks, dict):
                    raise ApiError(503, "auth_unavailable", "apex.auth's JWKS is not an object")
                self._jwks = jwks
                self._fetched_at = time.monotonic()
            return self._jwks


def _refused(detail: str) -> ApiError:
    return ApiError(401, "invalid_token", detail, headers={"WWW-Authenticate": bearer_challenge()})
