"""What the endpoints of apex.auth share: the service context and the auth dependencies."""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
from typing import TYPE_CHECKING

import asyncpg
from fastapi import Request
from redis.asyncio import Redis

from apex.auth import audit
from apex.auth.resilience import REDIS_DOWN
from apex.auth.sessions import Session, SessionStore
from apex.auth.tokens import AccessClaims, Signer, TokenError
from apex.common.config import Settings
from apex.common.http import ApiError, bearer_token
from apex.common.ratelimit import SlidingWindowLimiter

if TYPE_CHECKING:
    from apex.auth.guard import Guard

__all__ = ["AuthContext", "Principal", "authenticated", "get_context", "require_admin"]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class AuthContext:
    """The resources of a running apex.auth app (created by its lifespan)."""

    settings: Settings
    signer: Signer
    pool: asyncpg.Pool
    redis: Redis
    sessions: SessionStore
    limiter: SlidingWindowLimiter
    # Failover, permission cache, API limits (apex.auth.guard); set by the lifespan.
    guard: Guard | None = dataclasses.field(default=None, kw_only=True)

    @property
    def events_channel(self) -> str:
        """Pub/sub channel announcing session revocations to other services."""
        return f"{self.settings.redis_prefix}auth:events"

    async def session_revoked(self, session: Session, *, actor: str, reason: str) -> None:
        """Audit the end of ``session`` and announce it to subscribers (gateways caching it)."""
        log.info("session %s revoked (%s)", session.id, reason)
        async with self.pool.acquire() as conn:
            await audit.record(
                conn,
                "session.revoked",
                # Session events are filed under the API key that opened the session
                # (and found by user id through user_id); interactive logins under the user.
                subject=session.api_key_id or session.user_id,
                actor=actor,
                user_id=session.user_id,
                detail={"session_id": session.id, "reason": reason},
            )
        if self.guard is not None:
            await self.guard.session_revoked(session)
        message = {
            "type": "session.revoked",
            "session_id": session.id,
            "user_id": session.user_id,
            "reason": reason,
        }
        await self.redis.publish(self.events_channel, json.dumps(message))


@dataclasses.dataclass(frozen=True)
class Principal:
    """The caller behind a valid access token, and its live session."""

    claims: AccessClaims
    session: Session


async def get_context(request: Request) -> AuthContext:
    """Dependency: the app's context; 503 if its lifespan has not run."""
    # async, as every dependency here: FastAPI runs a plain `def` dependency in its thread
    # pool, a thread hop (0.1-1 ms, more on a loaded machine) per request for a lookup.
    context = getattr(request.app.state, "auth", None)
    if not isinstance(context, AuthContext):
        raise ApiError(503, "unavailable", "service not started: its lifespan has not run")
    return context


async def require_admin(request: Request) -> None:
    """Dependency: the caller presents APEX_ADMIN_TOKEN as a bearer token."""
    expected = (await get_context(request)).settings.admin_token
    if not expected:
        raise ApiError(403, "forbidden", "admin API disabled")
    token = bearer_token(request)
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise ApiError(401, "invalid_token", "wrong admin token")


async def authenticated(request: Request) -> Principal:
    """Dependency: the caller presents a valid access token of a live session."""
    context = await get_context(request)
    try:
        claims = context.signer.verify(bearer_token(request))
    except TokenError as exc:
        raise ApiError(401, exc.code, exc.detail) from None
    if context.guard is not None:
        # Falls back to a stateless check on /me and /authz/check while Redis is down.
        session = await context.guard.session_for(request, context, claims)
    else:
        session = await context.sessions.get(claims.session_id)
    if session is None or session.user_id != claims.subject:
        raise ApiError(401, "session_revoked", "the session of this token has ended")
    if session.api_key_id is not None:
        await _refuse_if_key_revoked(context, session)
    if context.guard is not None:
        await context.guard.charge(request, claims)  # per-user API rate limit
    return Principal(claims=claims, session=session)


async def end_orphaned_session(context: AuthContext, session: Session, reason: str) -> ApiError:
    """End a session that outlived its API key or user, and the 401 to answer with.

    Revoking a key or deleting a user ends its sessions, but that sweep can be interrupted
    (Redis down, an event missed): PostgreSQL has the last word, so a session must never
    outlive its key or user. With Redis down the answer is still 401; the clean-up waits.
    """
    try:
        if await context.sessions.revoke(session.id) is not None:
            await context.session_revoked(session, actor=audit.SYSTEM, reason=reason)
    except REDIS_DOWN as exc:
        log.warning("session %s of a revoked key or user not ended in Redis: %r", session.id, exc)
    return ApiError(401, "session_revoked", "the API key or user of this session no longer exists")


async def _refuse_if_key_revoked(context: AuthContext, session: Session) -> None:
    """401 for a session of an API key that has been revoked (or deleted) since its login."""
    async with context.pool.acquire() as conn:
        live = await conn.fetchval(
            "SELECT true FROM api_keys WHERE id = $1 AND revoked_at IS NULL",
            session.api_key_id,
        )
    if not live:
        raise await end_orphaned_session(context, session, "api_key_revoked")
