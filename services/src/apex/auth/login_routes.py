"""Password login, second factors (TOTP, backup codes, SMS) and password reset by e-mail.

The routes' shared guards: `_per_client_ip` (a route dependency: the sign-in routes
share APEX_SIGN_IN_PER_IP, against spraying one password or code over many accounts;
forgot has its own), `_pending_login` (the mfa_token's login and its user) and
`_session_user` (the user behind a session, 401 when it is gone).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Annotated, Any, Final

import asyncpg
from fastapi import APIRouter, BackgroundTasks, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from apex.auth import audit, mfa, passwords, users
from apex.auth.context import AuthContext, Principal, authenticated, get_context
from apex.auth.lockout import Attempt, Budget, BudgetSpent, Locked
from apex.auth.logins import (
    AMR,
    IdentityServices,
    LoginUser,
    finish_login,
    get_identity,
    load_user,
    open_session,
)
from apex.auth.notify import DeliveryError
from apex.common.config import RateLimit, Settings
from apex.common.http import ApiError, require_json_body

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(dependencies=[Depends(require_json_body)])

Context = Annotated[AuthContext, Depends(get_context)]
Identity = Annotated[IdentityServices, Depends(get_identity)]
Caller = Annotated[Principal, Depends(authenticated)]

RESET_SUBJECT: Final = "Apex password reset"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginRequest(_Body):
    email: str = Field(max_length=users.MAX_EMAIL_LENGTH)
    password: str = Field(max_length=passwords.MAX_PASSWORD_LENGTH)


class MfaVerifyRequest(_Body):
    mfa_token: str = Field(max_length=256)
    code: str = Field(max_length=32)


class MfaTokenRequest(_Body):
    mfa_token: str = Field(max_length=256)


class CodeRequest(_Body):
    code: str = Field(max_length=32)


class ForgotRequest(_Body):
    email: str = Field(max_length=1000)


class ResetRequest(_Body):
    token: str = Field(max_length=256)
    new_password: str = Field(max_length=passwords.MAX_PASSWORD_LENGTH)


# --- password login -----------------------------------------------------------------


def _per_client_ip(kind: str, what: str, limit: Callable[[Settings], RateLimit]) -> Any:
    """A route dependency: one event of the client's IP in the ``kind`` window (``limit``
    of the settings), 429 ``rate_limited`` when it is full. The IP is the peer's
    (``request.client.host``: behind a proxy, run uvicorn with its forwarded-IP options)."""

    async def within(request: Request, context: Context) -> None:
        client = request.client.host if request.client is not None else "unknown"
        await _within_limit(context, f"{kind}:ip:{client}", limit(context.settings), what)

    return Depends(within)


# Password and second-factor attempts from one address, whatever the account (issue 10
# #11: a per-account lockout never sees one password tried on many accounts).
_SIGN_IN_PER_IP: Final = _per_client_ip(
    "signin", "sign-in attempts from your address", lambda settings: settings.sign_in_per_ip
)


@router.post("/auth/login", dependencies=[_SIGN_IN_PER_IP])
async def login(body: LoginRequest, context: Context, identity: Identity) -> dict[str, Any]:
    """E-mail + password: tokens, or an mfa challenge when the user has 2FA."""
    try:
        email = users.normalize_email(body.email)
    except ValueError:
        email = body.email.strip().lower()
    async with context.pool.acquire() as conn:
        user = await load_user(conn, email=email)
    # Admitted before the (slow) check, so a parallel burst cannot outrun the lockout.
    async with _attempt(identity, user, email=email) as attempt:
        password_hash = user.password_hash if user is not None else None
        hasher = passwords.hasher(context.settings.password_hash_cost)
        if user is None or not await hasher.verify(body.password, password_hash):
            detail = {"reason": "wrong_password", "method": "password"}
            await _failed(context, identity, attempt, user, detail)
            # One answer for unknown addresses and wrong passwords.
            raise ApiError(401, "invalid_credentials", "unknown e-mail address or wrong password")
        await identity.lockout.succeeded(attempt)
    return await finish_login(context, identity, user, "password")


# --- second factor ------------------------------------------------------------------


@router.post("/auth/mfa/verify", dependencies=[_SIGN_IN_PER_IP])
async def mfa_verify(
    body: MfaVerifyRequest, context: Context, identity: Identity
) -> dict[str, Any]:
    """Answer an mfa_token with a TOTP code, a backup code or an SMS code: tokens."""
    pending, user = await _pending_login(context, identity, body.mfa_token)
    code = body.code.strip()
    budget = identity.mfa.attempts_budget(pending, context.settings.mfa_token_attempts)
    try:
        async with _attempt(identity, user, second_factor=True, extra=[budget]) as attempt:
            async with context.pool.acquire() as conn:
                outcome = await _check_code(conn, identity, user, code, pending)
            if outcome != "accepted":
                detail = {"reason": outcome, "method": pending.method}
                await _failed(context, identity, attempt, user, detail)
                raise ApiError(401, outcome, _CODE_ERRORS[outcome])
            if not await identity.mfa.consume(pending):
                raise _invalid_mfa_token()  # a concurrent verify won: taken back on the way out
            await identity.lockout.succeeded(attempt)
    except BudgetSpent:
        raise ApiError(
            401, "invalid_mfa_token", "too many wrong codes for this mfa_token: sign in again"
        ) from None
    return await open_session(
        context, user, method=pending.method, amr=[AMR[pending.method], "otp"]
    )


@router.post("/auth/mfa/sms", status_code=202)
async def mfa_sms(body: MfaTokenRequest, context: Context, identity: Identity) -> dict[str, Any]:
    """Text a one-time code to the phone of the user behind an mfa_token."""
    pending, user = await _pending_login(context, identity, body.mfa_token)
    if identity.sms is None:
        raise ApiError(503, "not_configured", "SMS is not configured (APEX_SMS_*)")
    async with context.pool.acquire() as conn:
        if not user.phone:
            raise ApiError(409, "no_phone", "this account has no phone number for SMS codes")
        settings = context.settings
        # Per mfa_token first: a capped token then costs the user's own budget nothing.
        await _within_limit(
            context,
            f"sms:token:{pending.token_hash}",
            RateLimit(settings.mfa_sms_per_token, mfa.MFA_TOKEN_TTL),
            "codes by SMS for this mfa_token",
        )
        await _within_limit(
            context, f"sms:user:{user.id}", settings.mfa_sms_per_user, "codes by SMS for this user"
        )
        code = await identity.mfa.new_sms_code(pending)
        try:
            sid = await identity.sms.send(user.phone, f"Your Apex verification code is {code}")
        except DeliveryError as exc:
            log.warning("SMS to user %s failed: %s", user.id, exc.reason)
            await audit.record(
                conn,
                "sms.failed",
                subject=str(user.id),
                actor=audit.SYSTEM,
                user_id=user.id,
                detail={"reason": exc.reason},
            )
            raise ApiError(
                502, "sms_failed", "the SMS provider did not accept the message"
            ) from None
        await audit.record(
            conn,
            "mfa.sms_sent",
            subject=str(user.id),
            actor=audit.SYSTEM,
            user_id=user.id,
            detail={"to": _mask_phone(user.phone), "sid": sid},
        )
    return {"status": "sent", "to": _mask_phone(user.phone)}


@router.post("/me/2fa/totp")
async def totp_enroll(caller: Caller, context: Context) -> dict[str, Any]:
    """Start TOTP enrolment: a new secret, active once confirmed with a code."""
    user_id = uuid.UUID(caller.session.user_id)
    secret = mfa.new_totp_secret()
    async with context.pool.acquire() as conn:
        row = await conn.fetchrow(
            "UPDATE users SET totp_secret = $2, updated_at = now() "
            "WHERE id = $1 AND NOT totp_enabled RETURNING email",
            user_id,
            secret,
        )
        if row is None:
            await _session_user(conn, user_id)  # 401 if the user is gone
            raise ApiError(409, "totp_enabled", "TOTP is already enabled; disable it first")
    return {"secret": secret, "otpauth_uri": mfa.provisioning_uri(secret, row["email"])}


@router.post("/me/2fa/totp/confirm")
async def totp_confirm(body: CodeRequest, caller: Caller, context: Context) -> dict[str, Any]:
    """Confirm enrolment with a current code: TOTP is on, and here are the backup codes."""
    user_id = uuid.UUID(caller.session.user_id)
    async with context.pool.acquire() as conn, conn.transaction():
        user = await _user_for_update(conn, user_id)
        if user.totp_enabled:
            raise ApiError(409, "totp_enabled", "TOTP is already enabled")
        if not user.totp_secret:
            raise ApiError(409, "no_totp_enrollment", "start with POST /me/2fa/totp")
        if mfa.match_totp(user.totp_secret, body.code.strip()).step is None:
            raise ApiError(400, "invalid_code", "wrong or expired code")
        await conn.execute(
            "UPDATE users SET totp_enabled = true, updated_at = now() WHERE id = $1", user_id
        )
        codes = await mfa.replace_backup_codes(conn, user_id)
        await audit.record(
            conn,
            "mfa.enabled",
            subject=str(user_id),
            actor=audit.user_actor(user_id),
            user_id=user_id,
            detail={"method": "totp", "backup_codes": len(codes)},
        )
    return {"backup_codes": codes}


@router.delete("/me/2fa", status_code=204)
async def totp_disable(
    body: CodeRequest, caller: Caller, context: Context, identity: Identity
) -> Response:
    """Turn 2FA off, proven with a TOTP code of a time step not used before or a backup
    code; wrong codes spend the user's second-factor budget (APEX_MFA_LOCKOUT)."""
    user_id = uuid.UUID(caller.session.user_id)
    code = body.code.strip()
    async with context.pool.acquire() as conn:
        user = await _session_user(conn, user_id)
    async with _attempt(identity, user, sign_in=False, second_factor=True) as attempt:
        async with context.pool.acquire() as conn, conn.transaction():
            user = await _user_for_update(conn, user_id)
            if not user.totp_enabled or not user.totp_secret:
                raise ApiError(409, "totp_not_enabled", "2FA is not enabled")
            outcome = await _check_code(conn, identity, user, code, None)
            if outcome == "accepted":
                await conn.execute(
                    "UPDATE users SET totp_enabled = false, totp_secret = NULL, "
                    "updated_at = now() WHERE id = $1",
                    user_id,
                )
                await conn.execute("DELETE FROM mfa_backup_codes WHERE user_id = $1", user_id)
                await audit.record(
                    conn,
                    "mfa.disabled",
                    subject=str(user_id),
                    actor=audit.user_actor(user_id),
                    user_id=user_id,
                )
        if outcome != "accepted":
            detail = {"reason": outcome}
            await _failed(context, identity, attempt, user, detail, "mfa.disable_failed")
            raise ApiError(400, outcome, _CODE_ERRORS[outcome])
        await identity.lockout.succeeded(attempt)
    await identity.mfa.forget_totp_steps(str(user_id))
    return Response(status_code=204)


# --- password reset -----------------------------------------------------------------


@router.post(
    "/auth/password/forgot",
    status_code=202,
    dependencies=[
        _per_client_ip(
            "forgot", "resets from your address", lambda settings: settings.password_forgot_per_ip
        )
    ],
)
async def forgot_password(
    body: ForgotRequest,
    background: BackgroundTasks,
    context: Context,
    identity: Identity,
) -> JSONResponse:
    """Mail a reset link to a known address, within limits per client IP and per address.

    Up to the answer, known and unknown addresses take one path (the same limits, no
    lookup), so neither the answer nor its timing tells whether an account exists; the
    lookup, the token and the mail come after the response.
    """
    settings = context.settings
    accepted = JSONResponse({"status": "accepted"}, status_code=202)
    try:
        email = users.normalize_email(body.email)
    except ValueError:
        return accepted
    await _within_limit(
        context,
        f"forgot:email:{_sha(email)}",
        settings.password_forgot_per_email,
        "resets for this e-mail address",
    )
    background.add_task(_start_reset, context, identity, email)
    return accepted


async def _start_reset(context: AuthContext, identity: IdentityServices, email: str) -> None:
    """After the answer to a forgot request: for a known address, a token and its mail."""
    token = secrets.token_urlsafe(32)
    try:
        user = await _store_reset_token(context, email, token)
    except (OSError, asyncpg.PostgresError):
        log.exception("could not start a password reset")
        return
    if user is not None:
        await _send_reset_mail(context, identity, user, token)


async def _store_reset_token(context: AuthContext, email: str, token: str) -> LoginUser | None:
    """Store ``token`` for the user with ``email`` (None: nobody has it)."""
    async with context.pool.acquire() as conn, conn.transaction():
        user = await load_user(conn, email=email)
        if user is None:
            return None
        # A new request invalidates the user's older tokens. Requests of one user take turns
        # (a lock until commit): two at once each invalidated what was committed before
        # either inserted, and both tokens stayed valid.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"password-reset:{user.id}"
        )
        await conn.execute(
            "UPDATE password_resets SET used_at = now() WHERE user_id = $1 AND used_at IS NULL",
            user.id,
        )
        await conn.execute(
            "INSERT INTO password_resets (token_sha256, user_id, expires_at) "
            "VALUES ($1, $2, now() + make_interval(secs => $3))",
            _sha(token),
            user.id,
            float(context.settings.password_reset_ttl),
        )
        await audit.record(
            conn,
            "password.reset_requested",
            subject=str(user.id),
            actor=audit.SYSTEM,
            user_id=user.id,
            detail={"expires_in": context.settings.password_reset_ttl},
        )
    return user


@router.post("/auth/password/reset", status_code=204)
async def reset_password(body: ResetRequest, context: Context, identity: Identity) -> Response:
    """Set a new password with a mailed token; every session of the user ends."""
    try:
        passwords.check_password_policy(body.new_password)
    except ValueError as exc:
        raise ApiError(422, "weak_password", str(exc)) from None
    password_hash = await passwords.hasher(context.settings.password_hash_cost).hash(
        body.new_password
    )
    async with context.pool.acquire() as conn:
        async with conn.transaction():
            user_id = await conn.fetchval(
                "UPDATE password_resets SET used_at = now() "
                "WHERE token_sha256 = $1 AND used_at IS NULL AND expires_at > now() "
                "RETURNING user_id",
                _sha(body.token),
            )
            if user_id is None:
                raise ApiError(400, "invalid_token", "unknown, used or expired reset token")
            await conn.execute(
                "UPDATE users SET password_hash = $2, locked_until = NULL, updated_at = now() "
                "WHERE id = $1",
                user_id,
                password_hash,
            )
            await audit.record(
                conn,
                "password.reset",
                subject=str(user_id),
                actor=audit.user_actor(user_id),
                user_id=user_id,
            )
        await identity.lockout.clear(conn, user_id)
    for session in await context.sessions.list_for_user(str(user_id)):
        revoked = await context.sessions.revoke(session.id)
        if revoked is not None:
            await context.session_revoked(
                revoked, actor=audit.user_actor(user_id), reason="password_reset"
            )
    return Response(status_code=204)


def reset_mail_body(public_url: str, token: str, ttl: float) -> str:
    """The text of the reset e-mail: a link and the bare token."""
    minutes = max(1, int(ttl // 60))
    return (
        "Someone (hopefully you) asked to reset the password of your Apex account.\n"
        f"Open this link within {minutes} minutes to choose a new password:\n\n"
        f"{public_url}/reset?token={token}\n\n"
        f"Token: {token}\n\n"
        "If you did not ask for this, ignore this message: your password stays as it is.\n"
    )


async def _send_reset_mail(
    context: AuthContext, identity: IdentityServices, user: LoginUser, token: str
) -> None:
    settings = context.settings
    reason = None
    if identity.mailer is None:
        reason = "mail is not configured (APEX_SMTP_URL)"
    else:
        body = reset_mail_body(settings.public_url, token, settings.password_reset_ttl)
        try:
            await identity.mailer.send(user.email, RESET_SUBJECT, body)
        except DeliveryError as exc:
            reason = exc.reason
    if reason is None:
        return
    log.warning("password reset mail to user %s failed: %s", user.id, reason)
    try:
        async with context.pool.acquire() as conn:
            await audit.record(
                conn,
                "mail.failed",
                subject=str(user.id),
                actor=audit.SYSTEM,
                user_id=user.id,
                detail={"purpose": "password_reset", "reason": reason},
            )
    except (OSError, asyncpg.PostgresError):  # pragma: no cover - logged above already
        log.exception("could not audit the failed mail")


# --- helpers ------------------------------------------------------------------------


_CODE_ERRORS: Final = {
    "invalid_code": "wrong or expired code",
    "code_reused": "this code's time step has been used already",
}


@contextlib.asynccontextmanager
async def _attempt(
    identity: IdentityServices,
    user: LoginUser | None,
    *,
    email: str = "",
    sign_in: bool = True,
    second_factor: bool = False,
    extra: Sequence[Budget] = (),
) -> AsyncIterator[Attempt]:
    """An attempt of ``user`` (or of the unknown ``email``), admitted to its evaluation
    by apex.auth.lockout; 423 if the account is locked."""
    try:
        async with identity.lockout.attempt(
            user.id if user is not None else None,
            locked_until=user.locked_until if user is not None else None,
            email=email,
            sign_in=sign_in,
            second_factor=second_factor,
            extra=extra,
        ) as attempt:
            yield attempt
    except Locked as exc:  # only admission raises it
        raise _locked(exc.retry_after) from None


async def _check_code(
    conn: asyncpg.Connection,
    identity: IdentityServices,
    user: LoginUser,
    code: str,
    pending: mfa.PendingLogin | None,
) -> str:
    """What ``code`` is: "accepted", "code_reused" or "invalid_code". Tried in order: a
    TOTP code (its time step is then spent), the SMS code of the ``pending`` login, a
    backup code (then spent)."""
    if user.totp_enabled and user.totp_secret:
        step = mfa.match_totp(user.totp_secret, code).step
        if step is not None:
            claimed = await identity.mfa.claim_totp_step(str(user.id), step)
            return "accepted" if claimed else "code_reused"
    if pending is not None and await identity.mfa.check_sms_code(pending, code):
        return "accepted"
    if await mfa.use_backup_code(conn, user.id, code):
        return "accepted"
    return "invalid_code"


async def _failed(
    context: AuthContext,
    identity: IdentityServices,
    attempt: Attempt,
    user: LoginUser | None,
    detail: dict[str, Any],
    action: str = "login.failed",
) -> None:
    """A failed attempt: audit it (and the lockout it caused) for known users."""
    async with context.pool.acquire() as conn:
        filled = await identity.lockout.failed(conn, attempt)
        if user is None:
            return
        await audit.record(
            conn, action, subject=str(user.id), actor=audit.SYSTEM, user_id=user.id, detail=detail
        )
        if filled is not None:
            await audit.record(
                conn,
                "account.locked",
                subject=str(user.id),
                actor=audit.SYSTEM,
                user_id=user.id,
                detail={
                    "budget": filled.name,
                    "failures": filled.limit.count,
                    "seconds": math.ceil(filled.limit.window),
                },
            )


async def _within_limit(context: AuthContext, subject: str, limit: RateLimit, what: str) -> None:
    """Count one event of ``subject`` in its sliding window; 429 when the window is full."""
    decision = await context.limiter.hit(subject, limit)
    if not decision.allowed:
        raise ApiError(
            429,
            "rate_limited",
            f"at most {limit.count} {what} in {limit.window:g} s",
            headers={"Retry-After": str(decision.retry_after)},
        )


async def _pending_login(
    context: AuthContext, identity: IdentityServices, mfa_token: str
) -> tuple[mfa.PendingLogin, LoginUser]:
    """The login an mfa_token stands for and its user; 401 ``invalid_mfa_token`` if either
    is gone."""
    pending = await identity.mfa.pending(mfa_token)
    if pending is None:
        raise _invalid_mfa_token()
    async with context.pool.acquire() as conn:
        user = await load_user(conn, user_id=uuid.UUID(pending.user_id))
    if user is None:
        raise _invalid_mfa_token()
    return pending, user


async def _session_user(conn: asyncpg.Connection, user_id: uuid.UUID) -> LoginUser:
    """The user behind a session; 401 ``session_revoked`` when it no longer exists."""
    user = await load_user(conn, user_id=user_id)
    if user is None:
        raise ApiError(401, "session_revoked", "the user of this session no longer exists")
    return user


async def _user_for_update(conn: asyncpg.Connection, user_id: uuid.UUID) -> LoginUser:
    await conn.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", user_id)
    return await _session_user(conn, user_id)


def _locked(retry_after: int) -> ApiError:
    return ApiError(
        423,
        "account_locked",
        f"too many failed attempts: try again in {retry_after} s",
        headers={"Retry-After": str(max(1, retry_after))},
    )


def _invalid_mfa_token() -> ApiError:
    return ApiError(401, "invalid_mfa_token", "unknown, expired or used mfa_token")


def _mask_phone(phone: str) -> str:
    return phone[:3] + "*" * max(0, len(phone) - 5) + phone[-2:]


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
