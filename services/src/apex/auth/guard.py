"""What every authenticated request goes through besides the token check.

* Session lookup with a fallback: while Redis is unreachable, ``/me`` and
  ``/authz/check`` accept a valid access token whose session is not in the revocation
  cache (stateless verification, ``X-Apex-Degraded: redis``) as long as the cache is
  fresh enough; every other route that needs Redis answers 503 ``unavailable``.
* Per-user API rate limits by tier (APEX_API_RATE_LIMITS): one sliding window per
  user, ``rl:api:<user_id>``, through the same Lua limiter as token exchanges;
  ``X-RateLimit-Limit`` / ``X-RateLimit-Remaining`` on the answer.

:class:`GuardMiddleware` adds the headers collected during a request to its response
and refuses ``/auth/*`` routes (they all need Redis) while degraded.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import asyncpg
import jwt
from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apex.auth.permcache import PERMISSIONS_CHANGED, Loader, PermissionCache
from apex.auth.resilience import REDIS_DOWN, Resilience
from apex.auth.sessions import Session
from apex.auth.tokens import AccessClaims
from apex.common.config import RateLimit, Settings, lifetime
from apex.common.http import ApiError, bearer_token, error_response
from apex.common.identity import CONTEXT_TOKEN_TYPE
from apex.common.ratelimit import Decision, SlidingWindowLimiter

if TYPE_CHECKING:
    from apex.auth.context import AuthContext

__all__ = [
    "CONTEXT_TOKEN_TYPE",
    "DEGRADED_HEADER",
    "STATELESS_PATHS",
    "Guard",
    "GuardMiddleware",
    "Quota",
    "guard_of",
]

log = logging.getLogger(__name__)

DEGRADED_HEADER: Final = "X-Apex-Degraded"
# Routes that may answer from a stateless token check while Redis is down.
STATELESS_PATHS: Final = frozenset({"/me", "/authz/check"})
_HEADERS_KEY: Final = "apex.response_headers"
_QUOTA_KEY: Final = "apex.quota"
_METHODS: Final = {"pwd": "password", "otp": "password", "oidc": "oidc", "saml": "saml"}


class Quota:
    """The caller's API budget as counted for this request."""

    def __init__(self, tier: str, limit: RateLimit, remaining: int) -> None:
        self.tier, self.limit, self.remaining = tier, limit, remaining

    def to_json(self) -> dict[str, Any]:
        """``/me/quota``'s answer."""
        return {
            "tier": self.tier,
            "limit": self.limit.count,
            "window": self.limit.window,
            "remaining": self.remaining,
        }


class Guard:
    """Resilience, permission cache and API limits of one apex.auth instance."""

    def __init__(
        self,
        settings: Settings,
        resilience: Resilience,
        permissions: PermissionCache,
        limiter: SlidingWindowLimiter,
        pool: asyncpg.Pool,
    ) -> None:
        self.settings = settings
        self.resilience = resilience
        self.permissions = permissions
        self.limiter = limiter
        self._pool = pool

    @classmethod
    async def start(cls, context: AuthContext, *, loader: Loader) -> Guard:
        """Wire the caches to the event channel and start the background tasks."""
        settings = context.settings
        resilience = Resilience(
            context.redis,
            prefix=settings.redis_prefix,
            probe_interval=settings.redis_probe_interval,
            max_staleness=settings.failover_max_staleness,
            revocation_ttl=settings.jwt_access_ttl,
        )
        permissions = PermissionCache(
            context.redis,
            context.pool,
            prefix=settings.redis_prefix,
            channel=resilience.channel,
            loader=loader,
        )
        resilience.on_event(PERMISSIONS_CHANGED, permissions.handle_event)
        resilience.on_subscription(permissions.subscribed, permissions.unsubscribed)
        resilience.on_recovery(permissions.recovered)
        guard = cls(settings, resilience, permissions, context.limiter, context.pool)
        await resilience.start()
        return guard

    async def stop(self) -> None:
        """Stop the background tasks."""
        await self.resilience.stop()

    async def reset(self) -> None:
        """Forget the revocation cache, the outage state and the cached permissions; the
        background tasks go on (``apex.auth.reset_memory``)."""
        await self.resilience.reset()
        self.permissions.reset()  # after the probe: a recovery it saw leaves nothing behind

    # -- sessions -------------------------------------------------------------------

    async def session_for(
        self, request: Request, context: AuthContext, claims: AccessClaims
    ) -> Session | None:
        """The live session of a verified access token; None if it has ended."""
        try:
            header = jwt.get_unverified_header(bearer_token(request))
        except jwt.PyJWTError:
            header = {}
        if header.get("typ") == CONTEXT_TOKEN_TYPE:
            raise ApiError(401, "invalid_token", "a context token is not an access token")
        if self.resilience.degraded:
            return self._stateless(request, claims)
        try:
            return await context.sessions.get(claims.session_id)
        except REDIS_DOWN as exc:
            self.resilience.mark_down(exc)
            return self._stateless(request, claims)

    def _stateless(self, request: Request, claims: AccessClaims) -> Session | None:
        if request.url.path not in STATELESS_PATHS:
            raise self.unavailable("the session store (Redis) is unreachable")
        if not self.resilience.fresh():
            raise self.unavailable(
                "the session store (Redis) has been unreachable for longer than "
                "APEX_FAILOVER_MAX_STALENESS"
            )
        if self.resilience.is_revoked(claims.session_id):
            return None
        response_headers(request)[DEGRADED_HEADER] = "redis"
        amr = tuple(claims.amr) or (("api_key",) if claims.api_key_id else ())
        method = "api_key" if claims.api_key_id else _METHODS.get(amr[0] if amr else "", "")
        return Session(
            id=claims.session_id,
            user_id=claims.subject,
            api_key_id=claims.api_key_id,
            tenant_id=claims.tenant_id,
            scopes=list(claims.scopes),
            created_at=float(claims.issued_at),
            expires_at=float(claims.expires_at),
            refreshed_at=None,
            access_ttl=lifetime(claims.expires_at - claims.issued_at),
            method=method or "api_key",
            amr=amr,
        )

    def unavailable(self, detail: str) -> ApiError:
        """503 ``unavailable`` with Retry-After (one probe interval)."""
        return ApiError(
            503,
            "unavailable",
            f"{detail}; retry later",
            headers={"Retry-After": str(self.resilience.retry_after())},
        )

    async def session_revoked(self, session: Session) -> None:
        """Record a revocation for stateless checks (best effort: the session is gone anyway)."""
        ttl = max(session.access_ttl, self.settings.jwt_access_ttl)
        try:
            await self.resilience.record_revocation(session.id, ttl=ttl)
        except REDIS_DOWN as exc:
            log.warning("could not record revoked session %s: %r", session.id, exc)

    # -- API limits -----------------------------------------------------------------

    async def charge(self, request: Request, claims: AccessClaims) -> None:
        """Count this request against the user's window; 429 ``rate_limited`` when over."""
        if self.resilience.degraded:
            return  # Nothing to count with: the stateless routes stay open.
        try:
            user_id = uuid.UUID(claims.subject)
        except ValueError:
            raise ApiError(401, "invalid_token", "token subject is not a user id") from None
        async with self._pool.acquire() as conn:
            tier = await conn.fetchval("SELECT tier FROM users WHERE id = $1", user_id)
        tier = str(tier or claims.tier or "free")
        limit = self.settings.api_rate_limits.get(tier) or self.settings.api_rate_limits["free"]
        try:
            decision: Decision = await self.limiter.hit(f"api:{user_id}", limit)
        except REDIS_DOWN as exc:
            self.resilience.mark_down(exc)
            if request.url.path in STATELESS_PATHS:
                return
            raise self.unavailable("the rate limiter (Redis) is unreachable") from None
        headers = {
            "X-RateLimit-Limit": str(limit.count),
            "X-RateLimit-Remaining": str(decision.remaining),
        }
        if not decision.allowed:
            raise ApiError(
                429,
                "rate_limited",
                f"more than {limit.count} API requests in {limit.window:g} s for this user "
                f"({tier} tier)",
                headers={**headers, "Retry-After": str(decision.retry_after)},
            )
        response_headers(request).update(headers)
        request.scope[_QUOTA_KEY] = Quota(tier, limit, decision.remaining)


def quota_of(request: Request) -> Quota | None:
    """The quota counted for this request (None while degraded)."""
    quota = request.scope.get(_QUOTA_KEY)
    return quota if isinstance(quota, Quota) else None


def response_headers(request: Request) -> dict[str, str]:
    """Headers :class:`GuardMiddleware` adds to this request's response."""
    headers = request.scope.get(_HEADERS_KEY)
    if not isinstance(headers, dict):
        headers = {}
        request.scope[_HEADERS_KEY] = headers
    return headers


def guard_of(context: AuthContext) -> Guard:
    """The context's guard; 503 if the app has not started it."""
    guard = context.guard
    if guard is None:
        raise ApiError(503, "unavailable", "service not started: its lifespan has not run")
    return guard


class GuardMiddleware:
    """Adds collected headers to responses; refuses ``/auth/*`` while Redis is down."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        scope[_HEADERS_KEY] = headers
        if str(scope.get("path", "")).startswith("/auth/"):
            guard = _running_guard(scope)
            if guard is not None and guard.resilience.degraded:
                error = guard.unavailable("the session store (Redis) is unreachable")
                response = error_response(error.status, error.code, error.detail, error.headers)
                await response(scope, receive, send)
                return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and headers:
                raw = list(message.get("headers", []))
                present = {name.lower() for name, _ in raw}
                for name, value in headers.items():
                    if name.lower().encode() not in present:
                        raw.append((name.lower().encode(), value.encode()))
                message = {**message, "headers": raw}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _running_guard(scope: Mapping[str, Any]) -> Guard | None:
    app = scope.get("app")
    context = getattr(getattr(app, "state", None), "auth", None)
    guard = getattr(context, "guard", None)
    return guard if isinstance(guard, Guard) else None
