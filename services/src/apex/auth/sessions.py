"""Sessions in Redis, and their rotating refresh tokens.

A session is the hash ``sess:<sid>`` (TTL = the refresh TTL, fixed at creation, or the
access TTL for a client-credentials token), indexed by ``user_sess:<user_id>`` and
``key_sess:<api_key_id>`` sets; every key carries the platform's Redis prefix. Device
limits end the oldest interactive sessions in one Lua script
(:meth:`SessionStore.evict_beyond`). A refresh token reads ``apr_<sid>_<secret>``; the
session stores the SHA-256 of the current secret and of every secret it replaced, so
presenting a replaced one is recognised as reuse (a stolen token racing its owner) and
ends the session.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
import secrets
import string
import time
import uuid
from collections.abc import Sequence
from typing import Any, Final, Literal

from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from apex.common.config import lifetime

__all__ = [
    "RotateResult",
    "Session",
    "SessionStore",
    "format_refresh_token",
    "parse_refresh_token",
]

REFRESH_PREFIX: Final = "apr"
_SECRET_ALPHABET: Final = string.ascii_letters + string.digits
_REFRESH_SECRET_LENGTH: Final = 43
_REFRESH_TOKEN = re.compile(
    rf"{REFRESH_PREFIX}_(?P<sid>[0-9a-f]{{32}})_(?P<secret>[A-Za-z0-9]{{{_REFRESH_SECRET_LENGTH}}})"
)
_SID = re.compile(r"[0-9a-f]{32}")
_FIELDS: Final = (
    "user_id",
    "api_key_id",
    "tenant_id",
    "scopes",
    "created_at",
    "expires_at",
    "refreshed_at",
    "access_ttl",
    "method",
    "amr",
)
# How a session was opened (issue 3); sessions stored before carry no method: api_key.
METHODS: Final = ("api_key", "oidc", "saml", "password")

# Rotation must be atomic: two requests presenting the same refresh token must not
# both get a new pair. Comparing hashes (not secrets) in Lua leaks nothing useful
# through timing: a caller cannot choose the preimage of a hash.
_ROTATE: Final = """
-- KEYS[1]: session hash. ARGV[1]: hash of the presented secret, ARGV[2]: hash of
-- its replacement, ARGV[3]: now, ARGV[4..]: the session fields to return.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing'}
end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
local current = redis.call('HGET', KEYS[1], 'refresh_hash')
if current == ARGV[1] then
  redis.call('HSET', KEYS[1], 'refresh_hash', ARGV[2], 'used:' .. ARGV[1], ARGV[3],
             'refreshed_at', ARGV[3])
  return {'ok', unpack(redis.call('HMGET', KEYS[1], unpack(fields)))}
end
if redis.call('HEXISTS', KEYS[1], 'used:' .. ARGV[1]) == 1 then
  local values = redis.call('HMGET', KEYS[1], unpack(fields))
  redis.call('DEL', KEYS[1])
  return {'reused', unpack(values)}
end
return {'invalid'}
"""


# A login over the device limit ends the user's oldest interactive sessions (never the
# one it just opened) in one step: concurrent logins each see every session opened
# before them and none that another has ended, so exactly the limit stays alive. The
# session hashes are derived from the index's members (standalone Redis allows it).
_EVICT: Final = """
-- KEYS[1]: the user's session index. ARGV[1]: the key prefix, ARGV[2]: the limit,
-- ARGV[3]: the session to keep, ARGV[4..]: the fields to return of each ended session.
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
local live = {}
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[1] .. 'sess:' .. sid
  local found = redis.call('HMGET', key, 'method', 'created_at')
  if found[1] then
    if found[1] ~= 'api_key' and found[1] ~= '' then
      live[#live + 1] = {sid, tonumber(found[2]) or 0}
    end
  elseif redis.call('EXISTS', key) == 0 then
    redis.call('SREM', KEYS[1], sid)
  end
end
table.sort(live, function(a, b)
  if a[2] ~= b[2] then return a[2] < b[2] end
  return a[1] < b[1]
end)
local excess = #live - tonumber(ARGV[2])
local ended = {}
for _, entry in ipairs(live) do
  if excess <= 0 then break end
  if entry[1] ~= ARGV[3] then
    local key = ARGV[1] .. 'sess:' .. entry[1]
    local values = redis.call('HMGET', key, unpack(fields))
    redis.call('DEL', key)
    redis.call('SREM', KEYS[1], entry[1])
    ended[#ended + 1] = {entry[1], unpack(values)}
    excess = excess - 1
  end
end
return ended
"""


@dataclasses.dataclass(frozen=True)
class Session:
    """A live session."""

    id: str
    user_id: str
    api_key_id: str | None
    tenant_id: str | None
    scopes: list[str]
    created_at: float
    expires_at: float
    refreshed_at: float | None
    access_ttl: float  # seconds: an int when whole (apex.common.config.lifetime)
    method: str = "api_key"
    amr: tuple[str, ...] = ("api_key",)

    def to_json(self, *, current_id: str | None = None) -> dict[str, Any]:
        """The API's view of the session."""
        return {
            "session_id": self.id,
            "api_key_id": self.api_key_id,
            "created_at": _iso(self.created_at),
            "refreshed_at": _iso(self.refreshed_at) if self.refreshed_at is not None else None,
            "expires_at": _iso(self.expires_at),
            "current": self.id == current_id,
            "method": self.method,
        }


@dataclasses.dataclass(frozen=True)
class RotateResult:
    """Outcome of presenting a refresh token."""

    status: Literal["ok", "reused", "invalid"]
    session: Session | None = None
    refresh_token: str | None = None


def format_refresh_token(session_id: str, secret: str) -> str:
    """The refresh token handed to the client."""
    return f"{REFRESH_PREFIX}_{session_id}_{secret}"


def parse_refresh_token(token: str) -> tuple[str, str] | None:
    """``(session_id, secret)`` of a well-formed refresh token, else None."""
    match = _REFRESH_TOKEN.fullmatch(token)
    return (match.group("sid"), match.group("secret")) if match else None


def is_session_id(text: str) -> bool:
    """Whether ``text`` has the shape of a session id."""
    return _SID.fullmatch(text) is not None


class SessionStore:
    """Sessions of one platform namespace (Redis prefix)."""

    def __init__(self, redis: Redis, *, prefix: str, ttl: float) -> None:
        self._redis = redis
        self._prefix = prefix
        self.ttl = ttl
        self._rotate = redis.register_script(_ROTATE)
        self._evict = redis.register_script(_EVICT)

    def session_key(self, session_id: str) -> str:
        """Redis key of a session hash."""
        return f"{self._prefix}sess:{session_id}"

    def user_index_key(self, user_id: str) -> str:
        """Redis key of the set of a user's session ids."""
        return f"{self._prefix}user_sess:{user_id}"

    def key_index_key(self, api_key_id: str) -> str:
        """Redis key of the set of session ids created with an API key."""
        return f"{self._prefix}key_sess:{api_key_id}"

    async def create(
        self,
        *,
        user_id: str,
        api_key_id: str | None,
        tenant_id: str | None,
        scopes: Sequence[str],
        access_ttl: float,
        method: str = "api_key",
        amr: Sequence[str] = ("api_key",),
        ttl: float | None = None,
    ) -> tuple[Session, str]:
        """Start a session; return it and its first refresh token.

        ``api_key_id`` is None unless ``method`` is api_key (the key that opened it). The
        session lives ``ttl`` seconds, the store's refresh TTL unless shorter.
        """
        session_id = uuid.uuid4().hex
        secret = _new_secret()
        now = time.time()
        span = self.ttl if ttl is None else min(ttl, self.ttl)
        session = Session(
            id=session_id,
            user_id=user_id,
            api_key_id=api_key_id,
            tenant_id=tenant_id,
            scopes=list(scopes),
            created_at=now,
            expires_at=now + span,
            refreshed_at=None,
            access_ttl=access_ttl,
            method=method,
            amr=tuple(amr),
        )
        mapping: dict[FieldT, EncodableT] = {
            "user_id": user_id,
            "api_key_id": api_key_id or "",
            "method": method,
            "amr": json.dumps(list(amr)),
            "tenant_id": tenant_id or "",
            "scopes": json.dumps(list(scopes)),
            "created_at": repr(now),
            "expires_at": repr(session.expires_at),
            "access_ttl": str(access_ttl),
            "refresh_hash": _hash(secret),
        }
        key = self.session_key(session_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=mapping)
            # In milliseconds: the lifetimes may be fractions of a second (a test
            # environment's APEX_JWT_*_TTL).
            pipe.pexpire(key, round(span * 1000))
            # The index sets live as long as the longest session can; members whose
            # session expired are pruned when read.
            indexes = [self.user_index_key(user_id)]
            if api_key_id:
                indexes.append(self.key_index_key(api_key_id))
            for index in indexes:
                pipe.sadd(index, session_id)
                pipe.pexpire(index, round(self.ttl * 1000))
            await pipe.execute()
        return session, format_refresh_token(session_id, secret)

    async def get(self, session_id: str) -> Session | None:
        """The live session ``session_id``, or None."""
        values = await self._redis.hmget(self.session_key(session_id), list(_FIELDS))
        return _session(session_id, values)

    async def rotate(self, session_id: str, secret: str) -> RotateResult:
        """Swap the refresh secret ``secret`` for a new one; a replaced secret ends the session.

        On reuse the result carries the session as it was, so the caller can audit it.
        """
        new_secret = _new_secret()
        reply = await self._rotate(
            keys=[self.session_key(session_id)],
            args=[_hash(secret), _hash(new_secret), repr(time.time()), *_FIELDS],
        )
        status, values = reply[0], list(reply[1:])
        if status not in ("ok", "reused"):
            return RotateResult("invalid")
        session = _session(session_id, values)
        if status == "reused":
            if session is not None:
                await self.forget(session)
            return RotateResult("reused", session)
        return RotateResult("ok", session, format_refresh_token(session_id, new_secret))

    async def revoke(self, session_id: str) -> Session | None:
        """End a session; return it if this call ended it (None if it was already gone)."""
        session = await self.get(session_id)
        if session is None:
            return None
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.session_key(session_id))
            pipe.srem(self.user_index_key(session.user_id), session_id)
            if session.api_key_id:
                pipe.srem(self.key_index_key(session.api_key_id), session_id)
            deleted, *_ = await pipe.execute()
        # Two concurrent revocations both read the session; only the one whose
        # DEL removed it reports it (so it is audited once).
        return session if deleted else None

    async def forget(self, session: Session) -> None:
        """Drop a deleted session's id from its index sets."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.srem(self.user_index_key(session.user_id), session.id)
            if session.api_key_id:
                pipe.srem(self.key_index_key(session.api_key_id), session.id)
            await pipe.execute()

    async def revoke_for_key(self, api_key_id: str) -> list[Session]:
        """End every session created with ``api_key_id``; return those this call ended."""
        index = self.key_index_key(api_key_id)
        revoked = []
        for session_id in sorted(_text(member) for member in await self._redis.smembers(index)):
            session = await self.revoke(session_id)
            if session is not None:
                revoked.append(session)
        await self._redis.delete(index)
        return revoked

    async def evict_beyond(self, user_id: str, limit: int, *, keep: str) -> list[Session]:
        """End the user's oldest interactive sessions beyond ``limit`` (never ``keep``),
        atomically; return those this call ended. API-key sessions neither count nor end."""
        reply = await self._evict(
            keys=[self.user_index_key(user_id)], args=[self._prefix, limit, keep, *_FIELDS]
        )
        ended = []
        for session_id, *values in reply:
            session = _session(_text(session_id), values)
            if session is not None:
                ended.append(session)
        return ended

    async def list_for_user(self, user_id: str) -> list[Session]:
        """The live sessions of ``user_id``, oldest first."""
        index = self.user_index_key(user_id)
        session_ids = sorted(_text(member) for member in await self._redis.smembers(index))
        if not session_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                pipe.hmget(self.session_key(session_id), list(_FIELDS))
            rows = await pipe.execute()
        sessions, stale = [], []
        for session_id, values in zip(session_ids, rows, strict=True):
            session = _session(session_id, values)
            if session is None:
                stale.append(session_id)
            else:
                sessions.append(session)
        if stale:
            await self._redis.srem(index, *stale)
        return sorted(sessions, key=lambda s: s.created_at)


def _session(session_id: str, values: Sequence[bytes | str | None]) -> Session | None:
    fields = {
        name: _text(value) if value is not None else None
        for name, value in zip(_FIELDS, values, strict=True)
    }
    user_id, api_key_id = fields["user_id"], fields["api_key_id"] or None
    method = fields["method"] or "api_key"
    if not user_id or (method == "api_key" and not api_key_id):
        return None
    refreshed = fields["refreshed_at"]
    return Session(
        id=session_id,
        user_id=user_id,
        api_key_id=api_key_id,
        tenant_id=fields["tenant_id"] or None,
        scopes=json.loads(fields["scopes"] or "[]"),
        created_at=float(fields["created_at"] or 0),
        expires_at=float(fields["expires_at"] or 0),
        refreshed_at=float(refreshed) if refreshed else None,
        access_ttl=lifetime(float(fields["access_ttl"] or 0)),
        method=method,
        amr=tuple(json.loads(fields["amr"])) if fields["amr"] else (method,),
    )


def _text(value: bytes | str) -> str:
    # The client decodes replies (decode_responses=True); this keeps types honest.
    return value.decode() if isinstance(value, bytes) else value


def _new_secret() -> str:
    return "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(_REFRESH_SECRET_LENGTH))


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat()
