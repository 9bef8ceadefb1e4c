"""Second factors: TOTP (RFC 6238), single-use backup codes, SMS codes, and mfa_tokens.

- TOTP: 30 s steps, 6 digits, SHA-1 (what authenticator apps speak); a code is accepted
  for the current step and one step either side. Each accepted step is remembered in
  ``totp_step:<user_id>``: a code of the same or an earlier step is ``code_reused``.
- Backup codes: 10 per enrolment, shown once, stored as SHA-256, each usable once.
- mfa_token: what a first factor (password, OIDC, SAML) hands out when the user has
  2FA: ``mfa:<sha256(token)>`` in Redis (5 min), consumed by the successful verify.
  It takes APEX_MFA_TOKEN_ATTEMPTS codes (``mfa_attempts:<sha256(token)>``, a budget of
  apex.auth.lockout): after that many wrong ones even the right code is refused on it.
- SMS code: 6 digits sent to the user's phone, ``mfa_sms:<sha256(token)>`` holds its
  hash for APEX_MFA_SMS_CODE_TTL (default 5 min), deleted when used; a new SMS for the
  same mfa_token replaces it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import re
import secrets
import time
import uuid
from typing import Final

import asyncpg
import pyotp
from redis.asyncio import Redis

from apex.auth.lockout import Budget
from apex.common.config import RateLimit

__all__ = [
    "BACKUP_CODE_COUNT",
    "MFA_TOKEN_TTL",
    "MfaStore",
    "PendingLogin",
    "TotpMatch",
    "generate_backup_codes",
    "match_totp",
    "normalize_backup_code",
    "provisioning_uri",
]

TOTP_ISSUER: Final = "Apex"
TOTP_INTERVAL: Final = 30
TOTP_DIGITS: Final = 6
TOTP_WINDOW: Final = 1
BACKUP_CODE_COUNT: Final = 10
MFA_TOKEN_TTL: Final = 300
_BACKUP_ALPHABET: Final = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i
_SIX_DIGITS = re.compile(r"\d{6}")
_BACKUP_CODE = re.compile(r"[a-z0-9]{10}")

# Accept a TOTP step only if it is newer than the last accepted one (atomic).
_CLAIM_STEP: Final = """
local last = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) <= last then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


@dataclasses.dataclass(frozen=True)
class TotpMatch:
    """The time step a TOTP code belongs to (None: no step in the window matches)."""

    step: int | None


def new_totp_secret() -> str:
    """A fresh base32 TOTP secret (160 bits)."""
    return pyotp.random_base32(length=32)


def provisioning_uri(secret: str, account: str) -> str:
    """The ``otpauth://totp/...`` URI authenticator apps scan."""
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_INTERVAL).provisioning_uri(
        name=account, issuer_name=TOTP_ISSUER
    )


def match_totp(secret: str, code: str, *, now: float | None = None) -> TotpMatch:
    """Which step in the window (now +-1) ``code`` is the TOTP of, compared in constant time."""
    if not _SIX_DIGITS.fullmatch(code):
        return TotpMatch(None)
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_INTERVAL)
    current = int((time.time() if now is None else now) // TOTP_INTERVAL)
    found = None
    for step in range(current - TOTP_WINDOW, current + TOTP_WINDOW + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            found = step
    return TotpMatch(found)


def generate_backup_codes() -> list[str]:
    """Fresh backup codes, shown as ``xxxxx-xxxxx``."""
    codes = []
    for _ in range(BACKUP_CODE_COUNT):
        raw = "".join(secrets.choice(_BACKUP_ALPHABET) for _ in range(10))
        codes.append(f"{raw[:5]}-{raw[5:]}")
    return codes


def normalize_backup_code(code: str) -> str | None:
    """A backup code as stored (lower case, no separators), or None if it cannot be one."""
    cleaned = re.sub(r"[\s-]", "", code).lower()
    return cleaned if _BACKUP_CODE.fullmatch(cleaned) else None


def code_hash(code: str) -> str:
    """The stored form of a backup or SMS code."""
    return hashlib.sha256(code.encode()).hexdigest()


async def replace_backup_codes(conn: asyncpg.Connection, user_id: uuid.UUID) -> list[str]:
    """Drop the user's backup codes and store fresh ones; return them (shown once)."""
    codes = generate_backup_codes()
    await conn.execute("DELETE FROM mfa_backup_codes WHERE user_id = $1", user_id)
    await conn.executemany(
        "INSERT INTO mfa_backup_codes (user_id, code_sha256) VALUES ($1, $2)",
        [(user_id, code_hash(normalize_backup_code(code) or "")) for code in codes],
    )
    return codes


async def use_backup_code(conn: asyncpg.Connection, user_id: uuid.UUID, code: str) -> bool:
    """Spend one backup code; False if it is unknown or already used."""
    normalized = normalize_backup_code(code)
    if normalized is None:
        return False
    row = await conn.fetchval(
        "UPDATE mfa_backup_codes SET used_at = now() "
        "WHERE user_id = $1 AND code_sha256 = $2 AND used_at IS NULL RETURNING user_id",
        user_id,
        code_hash(normalized),
    )
    return row is not None


@dataclasses.dataclass(frozen=True)
class PendingLogin:
    """A first factor that succeeded, waiting for the second."""

    user_id: str
    method: str
    token_hash: str


class MfaStore:
    """mfa_tokens, SMS codes and spent TOTP steps in Redis."""

    def __init__(self, redis: Redis, *, prefix: str, sms_code_ttl: float) -> None:
        self._redis = redis
        self._prefix = prefix
        self._sms_code_ttl = sms_code_ttl
        self._claim_step = redis.register_script(_CLAIM_STEP)

    def _token_key(self, token_hash: str) -> str:
        return f"{self._prefix}mfa:{token_hash}"

    def _sms_key(self, token_hash: str) -> str:
        return f"{self._prefix}mfa_sms:{token_hash}"

    async def issue(self, user_id: str, method: str) -> str:
        """A new mfa_token for ``user_id``, whose first factor was ``method``."""
        token = secrets.token_urlsafe(32)
        payload = json.dumps({"user_id": user_id, "method": method})
        await self._redis.set(self._token_key(_sha(token)), payload, ex=MFA_TOKEN_TTL)
        return token

    async def pending(self, token: str) -> PendingLogin | None:
        """The login an mfa_token stands for, or None (unknown, expired or used)."""
        if len(token) > 256:
            return None
        token_hash = _sha(token)
        raw = await self._redis.get(self._token_key(token_hash))
        if raw is None:
            return None
        data = json.loads(raw)
        return PendingLogin(user_id=data["user_id"], method=data["method"], token_hash=token_hash)

    def attempts_budget(self, pending: PendingLogin, attempts: int) -> Budget:
        """The codes this mfa_token may try: used up, it is refused (it locks nothing)."""
        key = f"{self._prefix}mfa_attempts:{pending.token_hash}"
        return Budget("mfa_token", key, RateLimit(attempts, MFA_TOKEN_TTL), locks=False)

    async def consume(self, pending: PendingLogin) -> bool:
        """End an mfa_token after a successful verify; False if a concurrent verify won."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._token_key(pending.token_hash))
            pipe.delete(self._sms_key(pending.token_hash))
            deleted, _ = await pipe.execute()
        return bool(deleted)

    async def claim_totp_step(self, user_id: str, step: int) -> bool:
        """Record ``step`` as used; False if it (or a later step) was used before."""
        ttl = TOTP_INTERVAL * (2 * TOTP_WINDOW + 2)
        key = f"{self._prefix}totp_step:{user_id}"
        return bool(await self._claim_step(keys=[key], args=[step, ttl]))

    async def new_sms_code(self, pending: PendingLogin) -> str:
        """A fresh 6-digit SMS code for this login (replacing an earlier one)."""
        code = f"{secrets.randbelow(10**6):06d}"
        # To the millisecond (APEX_MFA_SMS_CODE_TTL may be a fraction of a second).
        ttl_ms = math.ceil(self._sms_code_ttl * 1000)
        await self._redis.set(self._sms_key(pending.token_hash), code_hash(code), px=ttl_ms)
        return code

    async def check_sms_code(self, pending: PendingLogin, code: str) -> bool:
        """Whether ``code`` is the SMS code of this login (it is then spent)."""
        if not _SIX_DIGITS.fullmatch(code):
            return False
        key = self._sms_key(pending.token_hash)
        stored = await self._redis.get(key)
        if stored is None or not hmac.compare_digest(str(stored), code_hash(code)):
            return False
        return bool(await self._redis.delete(key))

    async def forget_totp_steps(self, user_id: str) -> None:
        """Forget spent steps (when TOTP is disabled or re-enrolled)."""
        await self._redis.delete(f"{self._prefix}totp_step:{user_id}")


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
