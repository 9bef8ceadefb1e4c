"""What the gateway asks apex.auth: its signing keys (JWKS) and a user's permissions.

Access tokens are verified locally (RS256 against the cached JWKS, iss, aud, exp), and
the session must still exist in Redis (``<prefix>sess:<sid>``, the namespace auth
writes). Every HTTP call to auth goes through the ``auth`` circuit breaker.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Final

import httpx
import jwt
from redis.asyncio import Redis

from apex.common import jwts
from apex.common.tls import client_tls_context
from apex.gateway.breaker import Breaker, CircuitOpen

__all__ = ["AuthClient", "Principal", "TokenRejected"]

ALGORITHM: Final = jwts.ALGORITHM
REQUIRED_CLAIMS: Final = ("iss", "aud", "sub", "sid", "iat", "exp")
MAX_TOKEN_LENGTH: Final = 4096
HTTP_TIMEOUT_SECONDS: Final = 3.0
# An unknown kid triggers a refetch, but not more often than this (a flood of
# tokens with made-up kids must not become a flood of requests to auth).
JWKS_REFETCH_SECONDS: Final = 1.0


class TokenRejected(Exception):
    """A handshake or refresh token was refused: HTTP ``status`` and API error ``code``."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class Principal:
    """The user, tenant (None: the user has none) and session behind a verified token."""

    user_id: str
    session_id: str
    expires_at: int
    token: str
    tenant_id: str | None = None


class AuthClient:
    """JWKS cache, token verification and permission lookups against apex.auth."""

    def __init__(
        self,
        *,
        auth_url: str | None,
        issuer: str,
        audience: str,
        redis: Redis,
        prefix: str,
        breaker: Breaker,
    ) -> None:
        self.auth_url = auth_url
        self.issuer = issuer
        self.audience = audience
        self.breaker = breaker
        self._redis = redis
        self._prefix = prefix
        self._http = httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS, verify=client_tls_context())
        self._keys: dict[str, Any] = {}
        self._fetched_at = 0.0

    async def aclose(self) -> None:
        await self._http.aclose()

    def forget_keys(self) -> None:
        """Drop the cached JWKS: the next token fetches auth's keys again."""
        self._keys = {}
        self._fetched_at = 0.0

    async def verify(self, token: str) -> Principal:
        """The principal of a valid token with a live session; TokenRejected otherwise."""
        try:
            header = jwts.unverified_header(token, max_length=MAX_TOKEN_LENGTH)
            key = await self._key(str(header.get("kid", "")))
            claims = jwts.decode(
                token,
                key,
                audience=self.audience,
                issuer=self.issuer,
                require=REQUIRED_CLAIMS,
            )
        except jwts.JwtRejected as exc:
            code = "token_expired" if exc.check == "exp" else "invalid_token"
            raise TokenRejected(401, code, f"token rejected: {exc}") from None
        sub, sid, tid = claims.get("sub"), claims.get("sid"), claims.get("tid")
        if not (isinstance(sub, str) and sub and isinstance(sid, str) and sid):
            raise TokenRejected(401, "invalid_token", "token claims sub and sid must be strings")
        if tid is not None and not isinstance(tid, str):
            raise TokenRejected(401, "invalid_token", "token claim tid must be a string or null")
        if not await self.session_alive(sid):
            raise TokenRejected(401, "session_revoked", "the token's session has ended")
        return Principal(
            user_id=sub,
            session_id=sid,
            expires_at=int(claims["exp"]),
            token=token,
            tenant_id=tid,
        )

    async def session_alive(self, session_id: str) -> bool:
        return bool(await self._redis.exists(f"{self._prefix}sess:{session_id}"))

    async def _key(self, kid: str) -> Any:
        if kid not in self._keys and time.monotonic() - self._fetched_at >= JWKS_REFETCH_SECONDS:
            await self._fetch_jwks()
        try:
            return self._keys[kid]
        except KeyError:
            raise TokenRejected(401, "invalid_token", "token signed by an unknown key") from None

    async def _fetch_jwks(self) -> None:
        if self.auth_url is None:
            raise TokenRejected(503, "unavailable", "APEX_AUTH_URL is not set: cannot verify")

        async def fetch() -> dict[str, Any]:
            response = await self._http.get(f"{self.auth_url}/.well-known/jwks.json")
            response.raise_for_status()
            body: dict[str, Any] = response.json()
            return body

        try:
            jwks = await self.breaker.call(fetch)
        except CircuitOpen as exc:
            raise TokenRejected(503, "unavailable", str(exc)) from None
        except (httpx.HTTPError, ValueError) as exc:
            raise TokenRejected(
                503, "unavailable", f"cannot fetch auth's JWKS: {type(exc).__name__}"
            ) from None
        keys: dict[str, Any] = {}
        for jwk in jwks.get("keys", []):
            try:
                keys[str(jwk.get("kid", ""))] = jwt.PyJWK(jwk, algorithm=ALGORITHM).key
            except jwt.PyJWTError:
                continue
        self._keys = keys
        self._fetched_at = time.monotonic()

    async def permissions(self, token: str) -> list[str]:
        """The user's effective permissions (``GET /me/permissions`` with their token)."""
        if self.auth_url is None:
            raise CircuitOpen("auth")

        async def fetch() -> list[str]:
            response = await self._http.get(
                f"{self.auth_url}/me/permissions", headers={"Authorization": f"Bearer {token}"}
            )
            if response.status_code >= 500:
                response.raise_for_status()
            if response.status_code != 200:
                # The token's problem (expired, revoked), not auth's: no breaker failure.
                return []
            permissions = response.json().get("permissions", [])
            return [str(p) for p in permissions]

        return await self.breaker.call(fetch, failures=(httpx.HTTPError, ValueError))
