"""The response cache: answers of LLM requests kept in Redis, so an identical request is
answered without calling a provider.

A request's key is ``<prefix>agents:cache:<sha256>``, the hex SHA-256 of its normalised
form: compact JSON with sorted keys of ``{model, messages, tools, temperature,
max_tokens}``, each message's text content whitespace-trimmed (so requests differing
only in leading or trailing whitespace share an answer). Only requests at temperature 0
are cached (any other temperature asks for a different answer each time): :func:`key_of`
is None for them. An entry lives ``APEX_LLM_CACHE_TTL`` seconds (0: the cache is off)
and holds the answer's text; only answers that passed the quality gate are written.

A Redis error is a miss (reading) or nothing written (writing): the cache never fails a
run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

__all__ = ["ResponseCache", "key_of"]

log = logging.getLogger(__name__)


def _normal(message: Mapping[str, Any]) -> dict[str, Any]:
    normal = dict(message)
    content = normal.get("content")
    if isinstance(content, str):
        normal["content"] = content.strip()
    return normal


def key_of(
    model: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    temperature: float,
    max_tokens: int,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> str | None:
    """The request's digest (hex SHA-256 of its normalised form); None when it may not be
    cached (temperature other than 0)."""
    if temperature != 0:
        return None
    normal = {
        "model": model,
        "messages": [_normal(message) for message in messages],
        "tools": list(tools) if tools else None,
        "temperature": 0,
        "max_tokens": max_tokens,
    }
    text = json.dumps(normal, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ResponseCache:
    """Answers in Redis under ``<prefix>agents:cache:``, for ``ttl`` seconds."""

    def __init__(self, redis: Redis, prefix: str, *, ttl: float) -> None:
        self._redis = redis
        self._prefix = f"{prefix}agents:cache:"
        self._ttl_ms = int(ttl * 1000)

    @property
    def enabled(self) -> bool:
        """False when APEX_LLM_CACHE_TTL is 0."""
        return self._ttl_ms > 0

    async def get(self, digest: str) -> str | None:
        """The cached answer of the request with this digest, if any."""
        try:
            stored = await self._redis.get(self._prefix + digest)
        except (RedisError, OSError) as exc:
            log.warning("response cache: read: %s: %s", type(exc).__name__, exc)
            return None
        if stored is None:
            return None
        try:
            answer = json.loads(stored)["content"]
        except (ValueError, KeyError, TypeError):
            return None  # not an entry this service wrote: a miss
        return answer if isinstance(answer, str) else None

    async def put(self, digest: str, answer: str) -> None:
        """Keep ``answer`` for the request with this digest for the TTL."""
        try:
            await self._redis.set(
                self._prefix + digest, json.dumps({"content": answer}), px=self._ttl_ms
            )
        except (RedisError, OSError) as exc:
            log.warning("response cache: write: %s: %s", type(exc).__name__, exc)
