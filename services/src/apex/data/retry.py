"""Retrying database work: transactions that lost a deadlock or a serialization conflict,
and work that lost its connection (PostgreSQL restarting, a network cut).

A transaction failing with 40P01 (deadlock) or 40001 (serialization) is run again, up to
``APEX_DB_RETRIES`` attempts in all, then :class:`RetryExhausted`. Work that cannot reach
PostgreSQL is run again until ``APEX_DB_CONNECT_DEADLINE`` has passed, then
:class:`DatabaseUnavailable`. Between attempts: exponential backoff with full jitter
(``APEX_DB_RETRY_BACKOFF``). Retried work must be idempotent (a transaction that rolled
back, or a write keyed by an idempotency key).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import asyncpg

from apex.data.metrics import Metrics
from apex.data.settings import Backoff

__all__ = [
    "CONNECTION_ERRORS",
    "DatabaseUnavailable",
    "RetryExhausted",
    "backoff_delay",
    "retrying",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# SQLSTATE -> the reason the metric apex_data_retries_total counts.
RETRYABLE: Final = {"40P01": "deadlock", "40001": "serialization"}
# PostgreSQL unreachable, restarting, or the connection cut under a query.
CONNECTION_ERRORS: Final[tuple[type[BaseException], ...]] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    # A multi-host DSN found no writable host (mid-failover: the replica not promoted yet).
    asyncpg.exceptions.TargetServerAttributeNotMatched,
)


class RetryExhausted(Exception):
    """Every attempt of a transaction lost a deadlock or a serialization conflict."""

    def __init__(self, reason: str, attempts: int) -> None:
        super().__init__(f"{reason} on each of {attempts} attempt(s)")
        self.reason = reason
        self.attempts = attempts


class DatabaseUnavailable(Exception):
    """PostgreSQL could not be reached within the connect deadline."""


def backoff_delay(
    backoff: Backoff, attempt: int, rand: Callable[[], float] = random.random
) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)) seconds (attempt from 0)."""
    return float(rand() * min(backoff.cap, backoff.base * 2**attempt))


async def retrying(
    work: Callable[[], Awaitable[_T]],
    *,
    attempts: int,
    backoff: Backoff,
    connect_deadline: float,
    metrics: Metrics,
) -> _T:
    """``await work()``, again after a deadlock, a serialization failure or a lost
    connection, as described in the module's docstring."""
    conflicts = 0
    reconnects = 0
    started = time.monotonic()
    while True:
        try:
            return await work()
        except asyncpg.PostgresError as exc:
            reason = RETRYABLE.get(exc.sqlstate or "")
            if reason is None and not isinstance(exc, CONNECTION_ERRORS):
                raise
            if reason is not None:
                conflicts += 1
                if conflicts >= attempts:
                    raise RetryExhausted(reason, attempts) from exc
                delay = backoff_delay(backoff, conflicts - 1)
            else:
                delay = _reconnect_delay(backoff, reconnects, started, connect_deadline, exc)
                reconnects += 1
                reason = "connection"
        except CONNECTION_ERRORS as exc:
            delay = _reconnect_delay(backoff, reconnects, started, connect_deadline, exc)
            reconnects += 1
            reason = "connection"
        except asyncpg.InterfaceError as exc:
            # -- data-flow: a connection cut inside `async with conn.transaction()` surfaces
            # as "cannot call Transaction.__aexit__(): the underlying connection is closed",
            # the cut itself being its context: a lost connection, not a bug (was a 500).
            if not isinstance(exc.__context__, CONNECTION_ERRORS):
                raise
            delay = _reconnect_delay(backoff, reconnects, started, connect_deadline, exc)
            reconnects += 1
            reason = "connection"
        metrics.retries.labels(reason).inc()
        log.info("retrying database work after %s (in %.3f s)", reason, delay)
        await asyncio.sleep(delay)


def _reconnect_delay(
    backoff: Backoff, reconnects: int, started: float, deadline: float, exc: BaseException
) -> float:
    delay = backoff_delay(backoff, reconnects)
    if time.monotonic() - started + delay >= deadline:
        raise DatabaseUnavailable(
            f"PostgreSQL unreachable for {deadline:g} s: {type(exc).__name__}: {exc}"
        ) from exc
    return delay
