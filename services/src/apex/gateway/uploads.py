"""Chunked binary uploads with resume, kept in Redis: unfinished for APEX_WS_UPLOAD_TTL
after their last chunk, complete for 24 hours.

``upload.start`` creates ``<prefix>upload:<id>`` (hash: user, name, size, sha256,
received, state) and ``<prefix>upload:<id>:data`` (the bytes so far). A chunk is a
binary frame: 16-byte upload id (UUID bytes), 8-byte big-endian offset, data. A chunk
is appended only at exactly the received offset (one Lua script: check, append,
count), so a resumed upload after a reconnect continues where the bytes end.

What one user holds is bounded: ``<prefix>uploads:user:<uid>`` (sorted set, member
``<size>:<id>``, score = when the upload's keys expire) lists the user's stored
uploads, open or complete; ``upload.start`` checks the count and the sum of the
announced sizes against the user's quotas and creates the upload in the same script,
so parallel starts cannot overrun them (``quota_exceeded``). Expired uploads leave the
list by their score.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import struct
import time
import uuid
from typing import Any, Final

from redis.asyncio import Redis

__all__ = [
    "COMPLETE_TTL_SECONDS",
    "HEADER_SIZE",
    "Chunk",
    "Quotas",
    "UploadError",
    "UploadStore",
    "parse_chunk",
]

HEADER_SIZE: Final = 24
COMPLETE_TTL_SECONDS: Final = 24 * 3600
_SHA256 = re.compile(r"[0-9a-f]{64}")

_START: Final = """
-- KEYS[1]: the user's uploads, KEYS[2]: the new upload's meta hash.
-- ARGV[1]: now, ARGV[2]: count quota, ARGV[3]: byte quota, ARGV[4]: size,
-- ARGV[5]: index member, ARGV[6]: ttl, ARGV[7]: user, ARGV[8]: name, ARGV[9]: sha256,
-- ARGV[10]: the index's own ttl (the longest an upload lives).
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
if #members >= tonumber(ARGV[2]) then return {'count', #members} end
local used = 0
for _, member in ipairs(members) do
  used = used + tonumber(string.match(member, '^(%d+):'))
end
if used + tonumber(ARGV[4]) > tonumber(ARGV[3]) then return {'bytes', used} end
redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[6]), ARGV[5])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[10]) * 1000))
redis.call('HSET', KEYS[2], 'user_id', ARGV[7], 'name', ARGV[8], 'size', ARGV[4],
           'sha256', ARGV[9], 'received', 0, 'state', 'open')
redis.call('PEXPIRE', KEYS[2], math.ceil(tonumber(ARGV[6]) * 1000))
return {'ok', used}
"""

_APPEND: Final = """
-- KEYS[1]: meta hash, KEYS[2]: data, KEYS[3]: the user's uploads. ARGV[1]: user,
-- ARGV[2]: offset, ARGV[3]: bytes, ARGV[4]: ttl, ARGV[5]: now, ARGV[6]: upload id
local meta = redis.call('HMGET', KEYS[1], 'user_id', 'size', 'received')
if not meta[1] or meta[1] ~= ARGV[1] then return {'unknown_upload', 0} end
local received = tonumber(meta[3])
if tonumber(ARGV[2]) ~= received then return {'bad_offset', received} end
if received + string.len(ARGV[3]) > tonumber(meta[2]) then return {'too_large', received} end
redis.call('APPEND', KEYS[2], ARGV[3])
received = redis.call('HINCRBY', KEYS[1], 'received', string.len(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[4]) * 1000))
redis.call('PEXPIRE', KEYS[2], math.ceil(tonumber(ARGV[4]) * 1000))
redis.call('ZADD', KEYS[3], 'XX', tonumber(ARGV[5]) + tonumber(ARGV[4]), meta[2] .. ':' .. ARGV[6])
return {'ok', received}
"""


class UploadError(Exception):
    """An upload message or chunk was refused with error ``code``."""

    def __init__(self, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.extra = extra


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A parsed binary upload frame."""

    upload_id: str
    offset: int
    data: bytes


def parse_chunk(frame: bytes) -> Chunk | None:
    """The chunk in a binary frame, or None if the frame is too short to be one."""
    if len(frame) < HEADER_SIZE:
        return None
    (offset,) = struct.unpack(">Q", frame[16:HEADER_SIZE])
    return Chunk(str(uuid.UUID(bytes=bytes(frame[:16]))), offset, bytes(frame[HEADER_SIZE:]))


@dataclasses.dataclass(frozen=True)
class Upload:
    """An upload's state."""

    id: str
    size: int
    received: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class Quotas:
    """What one user may store: ``count`` uploads of at most ``total_bytes`` together,
    each at most ``max_size`` bytes; an unfinished one lives ``ttl`` seconds (fractions
    too: the keys expire to the millisecond) after its last chunk."""

    max_size: int
    count: int
    total_bytes: int
    ttl: float


class UploadStore:
    """Uploads of one Redis namespace; ``redis`` must not decode replies (data is bytes)."""

    def __init__(self, redis: Redis, *, prefix: str, quotas: Quotas) -> None:
        self._redis = redis
        self._prefix = prefix
        self.quotas = quotas
        self._start = redis.register_script(_START)
        self._append = redis.register_script(_APPEND)

    def _meta_key(self, upload_id: str) -> str:
        return f"{self._prefix}upload:{upload_id}"

    def _data_key(self, upload_id: str) -> str:
        return f"{self._prefix}upload:{upload_id}:data"

    def _user_key(self, user_id: str) -> str:
        return f"{self._prefix}uploads:user:{user_id}"

    async def start(self, user_id: str, message: dict[str, Any]) -> Upload:
        """Validate an ``upload.start`` and create the upload."""
        name, size, digest = message.get("name"), message.get("size"), message.get("sha256")
        if not isinstance(name, str) or not 1 <= len(name) <= 255:
            raise UploadError("invalid", "name must be a string of 1..255 characters")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise UploadError("invalid", "size must be a whole number of bytes, at least 1")
        quotas = self.quotas
        if size > quotas.max_size:
            raise UploadError("too_large", f"uploads are limited to {quotas.max_size} bytes")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest.lower()):
            raise UploadError("invalid", "sha256 must be 64 hex digits")
        upload = Upload(str(uuid.uuid4()), size, 0, digest.lower())
        verdict, used = await self._start(
            keys=[self._user_key(user_id), self._meta_key(upload.id)],
            args=[
                time.time(),
                quotas.count,
                quotas.total_bytes,
                size,
                _member(upload),
                quotas.ttl,
                user_id,
                name,
                upload.sha256,
                max(quotas.ttl, COMPLETE_TTL_SECONDS),
            ],
        )
        verdict = _text(verdict)
        if verdict == "count":
            raise UploadError(
                "quota_exceeded", f"you already store {quotas.count} uploads", limit=quotas.count
            )
        if verdict == "bytes":
            raise UploadError(
                "quota_exceeded",
                f"your uploads may hold {quotas.total_bytes} bytes together; "
                f"{quotas.total_bytes - int(used)} are left",
                limit=quotas.total_bytes,
            )
        return upload

    async def get(self, user_id: str, upload_id: Any) -> Upload:
        """The user's upload ``upload_id``; UploadError ``unknown_upload`` otherwise."""
        try:
            canonical = str(uuid.UUID(str(upload_id)))
        except ValueError:
            raise UploadError("unknown_upload", "no such upload") from None
        raw = await self._redis.hgetall(self._meta_key(canonical))
        meta = {_text(k): _text(v) for k, v in raw.items()}
        if meta.get("user_id") != user_id:
            raise UploadError("unknown_upload", "no such upload")
        return Upload(canonical, int(meta["size"]), int(meta["received"]), meta["sha256"])

    async def append(self, user_id: str, chunk: Chunk) -> Upload:
        """Append a chunk at its offset; UploadError bad_offset/too_large/unknown_upload."""
        status, received = await self._append(
            keys=[
                self._meta_key(chunk.upload_id),
                self._data_key(chunk.upload_id),
                self._user_key(user_id),
            ],
            args=[
                user_id,
                chunk.offset,
                chunk.data,
                self.quotas.ttl,
                time.time(),
                chunk.upload_id,
            ],
        )
        status = _text(status)
        if status == "bad_offset":
            raise UploadError(
                "bad_offset", "chunk not at the expected offset", expected_offset=int(received)
            )
        if status != "ok":
            raise UploadError(status, "chunk refused")
        return await self.get(user_id, chunk.upload_id)

    async def finish(self, user_id: str, upload: Upload) -> bool:
        """Check the complete upload's SHA-256: a match keeps it for a day, a mismatch
        drops it (and frees its share of the user's quota)."""
        data = await self._redis.get(self._data_key(upload.id)) or b""
        if isinstance(data, str):  # pragma: no cover - the store's client returns bytes
            data = data.encode()
        meta, stored = self._meta_key(upload.id), self._data_key(upload.id)
        async with self._redis.pipeline(transaction=True) as pipe:
            if hashlib.sha256(data).hexdigest() == upload.sha256:
                pipe.hset(meta, "state", "complete")
                pipe.expire(meta, COMPLETE_TTL_SECONDS)
                pipe.expire(stored, COMPLETE_TTL_SECONDS)
                expires = time.time() + COMPLETE_TTL_SECONDS
                pipe.zadd(self._user_key(user_id), {_member(upload): expires}, xx=True)
                complete = True
            else:
                pipe.delete(meta, stored)
                pipe.zrem(self._user_key(user_id), _member(upload))
                complete = False
            await pipe.execute()
        return complete


def _member(upload: Upload) -> str:
    """The upload's entry in its user's list: the size first, for the byte quota."""
    return f"{upload.size}:{upload.id}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
