"""Chunked binary uploads with resume, kept in Redis for 24 hours.

``upload.start`` creates ``<prefix>upload:<id>`` (hash: user, name, size, sha256,
received) and ``<prefix>upload:<id>:data`` (the bytes so far). A chunk is a binary
frame: 16-byte upload id (UUID bytes), 8-byte big-endian offset, data. A chunk is
appended only at exactly the received offset (one Lua script: check, append,
count), so a resumed upload after a reconnect continues where the bytes end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import struct
import uuid
from typing import Any, Final

from redis.asyncio import Redis

__all__ = ["HEADER_SIZE", "Chunk", "UploadError", "UploadStore", "parse_chunk"]

HEADER_SIZE: Final = 24
TTL_SECONDS: Final = 24 * 3600
_SHA256 = re.compile(r"[0-9a-f]{64}")

_APPEND: Final = """
-- KEYS[1]: meta hash, KEYS[2]: data. ARGV[1]: user, ARGV[2]: offset, ARGV[3]: bytes, ARGV[4]: ttl
local meta = redis.call('HMGET', KEYS[1], 'user_id', 'size', 'received')
if not meta[1] or meta[1] ~= ARGV[1] then return {'unknown_upload', 0} end
local received = tonumber(meta[3])
if tonumber(ARGV[2]) ~= received then return {'bad_offset', received} end
if received + string.len(ARGV[3]) > tonumber(meta[2]) then return {'too_large', received} end
redis.call('APPEND', KEYS[2], ARGV[3])
received = redis.call('HINCRBY', KEYS[1], 'received', string.len(ARGV[3]))
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
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


class UploadStore:
    """Uploads of one Redis namespace; ``redis`` must not decode replies (data is bytes)."""

    def __init__(self, redis: Redis, *, prefix: str, max_size: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self.max_size = max_size
        self._append = redis.register_script(_APPEND)

    def _meta_key(self, upload_id: str) -> str:
        return f"{self._prefix}upload:{upload_id}"

    def _data_key(self, upload_id: str) -> str:
        return f"{self._prefix}upload:{upload_id}:data"

    async def start(self, user_id: str, message: dict[str, Any]) -> Upload:
        """Validate an ``upload.start`` and create the upload."""
        name, size, digest = message.get("name"), message.get("size"), message.get("sha256")
        if not isinstance(name, str) or not 1 <= len(name) <= 255:
            raise UploadError("invalid", "name must be a string of 1..255 characters")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise UploadError("invalid", "size must be a whole number of bytes, at least 1")
        if size > self.max_size:
            raise UploadError("too_large", f"uploads are limited to {self.max_size} bytes")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest.lower()):
            raise UploadError("invalid", "sha256 must be 64 hex digits")
        upload = Upload(str(uuid.uuid4()), size, 0, digest.lower())
        key = self._meta_key(upload.id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "user_id": user_id,
                    "name": name,
                    "size": size,
                    "sha256": upload.sha256,
                    "received": 0,
                    "state": "open",
                },
            )
            pipe.expire(key, TTL_SECONDS)
            await pipe.execute()
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
            keys=[self._meta_key(chunk.upload_id), self._data_key(chunk.upload_id)],
            args=[user_id, chunk.offset, chunk.data, TTL_SECONDS],
        )
        status = _text(status)
        if status == "bad_offset":
            raise UploadError(
                "bad_offset", "chunk not at the expected offset", expected_offset=int(received)
            )
        if status != "ok":
            raise UploadError(status, "chunk refused")
        return await self.get(user_id, chunk.upload_id)

    async def finish(self, upload: Upload) -> bool:
        """Check the complete upload's SHA-256; on a mismatch the upload is dropped."""
        data = await self._redis.get(self._data_key(upload.id)) or b""
        if isinstance(data, str):  # pragma: no cover - the store's client returns bytes
            data = data.encode()
        if hashlib.sha256(data).hexdigest() == upload.sha256:
            await self._redis.hset(self._meta_key(upload.id), "state", "complete")
            return True
        await self._redis.delete(self._meta_key(upload.id), self._data_key(upload.id))
        return False


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
