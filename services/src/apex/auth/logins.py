"""Interactive logins (password, OIDC, SAML): users as logins see them, the services the
identity flows use, and how a login ends: an mfa_token when the user has 2FA, else a
session (method + amr) within the tier's device limit.

Device limits (APEX_DEVICE_LIMITS) count the user's interactive sessions (not the
API-key sessions of machines): a login over the limit ends the oldest ones, audited as
``session.revoked`` with reason ``device_limit``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from typing import Any, Final

import asyncpg
import httpx
from fastapi import Request
from redis.asyncio import Redis

from apex.auth import audit
from apex.auth.context import AuthContext
from apex.auth.lockout import Lockout
from apex.auth.mfa import MfaStore
from apex.auth.notify import Mailer, SmsSender
from apex.auth.sessions import Session
from apex.common.config import Settings
from apex.common.http import ApiError
from apex.common.tls import client_tls_context

__all__ = [
    "AMR",
    "IdentityServices",
    "LoginUser",
    "finish_login",
    "get_identity",
    "load_user",
    "open_session",
    "refresh_interactive",
]

log = logging.getLogger(__name__)

# RFC 8176 authentication method references of each first factor.
AMR: Final = {"password": "pwd", "oidc": "oidc", "saml": "saml", "api_key": "api_key"}
HTTP_TIMEOUT_SECONDS: Final = 10.0

_SELECT_USER: Final = (
    "SELECT id, email, tier, tenant_id, password_hash, phone, totp_enabled, totp_secret, "
    "locked_until FROM users "
)


@dataclasses.dataclass(frozen=True)
class LoginUser:
    """A user with what logins need (never serialised as such)."""

    id: uuid.UUID
    email: str
    tier: str
    tenant_id: uuid.UUID | None
    password_hash: str | None
    phone: str | None
    totp_enabled: bool
    totp_secret: str | None
    locked_until: dt.datetime | None = None

    @property
    def tenant(self) -> str | None:
        """The tenant id as text."""
        return str(self.tenant_id) if self.tenant_id is not None else None


async def load_user(
    conn: asyncpg.Connection, *, user_id: uuid.UUID | None = None, email: str | None = None
) -> LoginUser | None:
    """The user with this id or (case-insensitive) e-mail address, or None."""
    if user_id is not None:
        row = await conn.fetchrow(_SELECT_USER + "WHERE id = $1", user_id)
    else:
        row = await conn.fetchrow(_SELECT_USER + "WHERE lower(email) = lower($1)", email or "")
    if row is None:
        return None
    return LoginUser(
        id=row["id"],
        email=row["email"],
        tier=row["tier"],
        tenant_id=row["tenant_id"],
        password_hash=row["password_hash"],
        phone=row["phone"],
        totp_enabled=row["totp_enabled"],
        totp_secret=row["totp_secret"],
        locked_until=row["locked_until"],
    )


@dataclasses.dataclass
class IdentityServices:
    """What the identity flows need beyond AuthContext: outbound clients and stores."""

    settings: Settings
    http: httpx.AsyncClient
    lockout: Lockout
    mfa: MfaStore
    mailer: Mailer | None
    sms: SmsSender | None
    # Created on first use (they fetch the IdP's metadata): apex.auth.oidc / apex.auth.saml.
    oidc: Any = None
    saml: Any = None

    @classmethod
    def create(cls, settings: Settings, redis: Redis) -> IdentityServices:
        """The services for ``settings``; close with :meth:`aclose`."""
        http = httpx.AsyncClient(
            timeout=HTTP_TIMEOUT_SECONDS, follow_redirects=False, verify=client_tls_context()
        )
        sms = None
        if (
            settings.sms_base_url
            and settings.sms_account_sid
            and settings.sms_auth_token
            and settings.sms_from
        ):
            sms = SmsSender(
                http,
                base_url=settings.sms_base_url,
                account_sid=settings.sms_account_sid,
                auth_token=settings.sms_auth_token,
                sender=settings.sms_from,
            )
        return cls(
            settings=settings,
            http=http,
            lockout=Lockout(
                redis,
                prefix=settings.redis_prefix,
                limit=settings.login_lockout,
                mfa_limit=settings.mfa_lockout,
            ),
            mfa=MfaStore(
                redis, prefix=settings.redis_prefix, sms_code_ttl=settings.mfa_sms_code_ttl
            ),
            mailer=Mailer(settings.smtp_url, settings.mail_from) if settings.smtp_url else None,
            sms=sms,
        )

    async def aclose(self) -> None:
        """Close the outbound HTTP client."""
        await self.http.aclose()

    def reset(self) -> None:
        """Forget the IdPs' metadata and keys: the next SSO login fetches them afresh
        (``apex.auth.reset_memory``)."""
        self.oidc = None
        self.saml = None


async def get_identity(request: Request) -> IdentityServices:
    """Dependency: the app's identity services; 503 if its lifespan has not run (async:
    no thread hop, as `apex.auth.context.get_context`)."""
    identity = getattr(request.app.state, "identity", None)
    if not isinstance(identity, IdentityServices):
        raise ApiError(503, "unavailable", "service not started: its lifespan has not run")
    return identity


def mfa_methods(user: LoginUser, identity: IdentityServices) -> list[str]:
    """The second factors this user can answer an mfa_token with."""
    methods = ["totp", "backup_code"]
    if user.phone and identity.sms is not None:
        methods.append("sms")
    return methods


async def finish_login(
    context: AuthContext, identity: IdentityServices, user: LoginUser, method: str
) -> dict[str, Any]:
    """After a successful first factor: an mfa challenge if the user has 2FA, else tokens."""
    if user.totp_enabled:
        token = await identity.mfa.issue(str(user.id), method)
        return {
            "mfa_required": True,
            "mfa_token": token,
            "methods": mfa_methods(user, identity),
        }
    return await open_session(context, user, method=method, amr=[AMR[method]])


async def open_session(
    context: AuthContext, user: LoginUser, *, method: str, amr: Sequence[str]
) -> dict[str, Any]:
    """Start an interactive session, enforce the device limit, and return the token pair."""
    ttl = context.settings.jwt_access_ttl
    session, refresh_token = await context.sessions.create(
        user_id=str(user.id),
        api_key_id=None,
        tenant_id=user.tenant,
        scopes=[],
        access_ttl=ttl,
        method=method,
        amr=amr,
    )
    await enforce_device_limit(context, user, keep=session)
    async with context.pool.acquire() as conn:
        await audit.record(
            conn,
            "login.succeeded",
            subject=str(user.id),
            actor=audit.user_actor(user.id),
            user_id=user.id,
            detail={"method": method, "amr": list(amr), "session_id": session.id},
        )
    access_token = context.signer.issue(
        subject=str(user.id),
        session_id=session.id,
        tenant_id=user.tenant,
        tier=user.tier,
        scopes=[],
        api_key_id=None,
        ttl=ttl,
        amr=amr,
    )
    return token_pair(access_token, refresh_token, ttl, session.id, str(user.id))


async def enforce_device_limit(context: AuthContext, user: LoginUser, *, keep: Session) -> None:
    """End the user's interactive sessions but the newest ``limit`` (never ``keep``).

    Runs after the new session exists, in one atomic step in Redis
    (:meth:`SessionStore.evict_beyond`): however many logins of the user run at once,
    exactly the limit of sessions stays alive, and each one ended is audited once.
    """
    limit = context.settings.device_limits.get(user.tier, 1)
    for session in await context.sessions.evict_beyond(str(user.id), limit, keep=keep.id):
        await context.session_revoked(session, actor=audit.SYSTEM, reason="device_limit")


async def refresh_interactive(
    context: AuthContext, session: Session, refresh_token: str
) -> dict[str, Any]:
    """The new pair of a rotated interactive session (tier and tenant read afresh)."""
    async with context.pool.acquire() as conn:
        user = await load_user(conn, user_id=uuid.UUID(session.user_id))
    if user is None:
        if await context.sessions.revoke(session.id) is not None:
            await context.session_revoked(session, actor=audit.SYSTEM, reason="user_deleted")
        raise ApiError(401, "invalid_refresh_token", "the user of this session no longer exists")
    access_token = context.signer.issue(
        subject=session.user_id,
        session_id=session.id,
        tenant_id=user.tenant,
        tier=user.tier,
        scopes=session.scopes,
        api_key_id=None,
        ttl=session.access_ttl,
        amr=session.amr,
    )
    pair = token_pair(access_token, refresh_token, session.access_ttl, session.id, session.user_id)
    del pair["user_id"]
    return pair


def token_pair(
    access_token: str, refresh_token: str, ttl: float, session_id: str, user_id: str
) -> dict[str, Any]:
    """The token response of a login (the /auth/token shape plus ``user_id``)."""
    return {
        "access_token": access_token,
        "refresh_token": refresh_token,
        "token_type": "Bearer",
        "expires_in": ttl,
        "session_id": session_id,
        "user_id": user_id,
    }
