"""The audit trail of runs: ordered events in PostgreSQL (``agent_audit_events``,
migration 0020; ``run.finished`` written by migration 0021's trigger).

Any module records an event with :meth:`AuditLog.record` (``service.audit``, or the
``audit`` the caller and the workers hold): the run (its tenant and id), the event's
``kind``, the step it concerns and a JSON object of data. The kinds in use
(``EVENTS``): ``run.submitted``, ``step.started``, ``llm.called`` ``{provider, model,
tokens, cached}``, ``llm.failed``, ``tool.called``, ``tool.denied``, ``quality.failed``,
``breaker.opened``, ``run.cancelled``, ``run.interrupted``, ``run.restored``,
``run.finished``. ``GET /v1/runs/{id}/audit`` reads them in the order they were recorded.

The events of one run are written one at a time (``RUN_LOCK``, a transaction lock of the
run), and after each the ``relay`` hook, when set, sends the run's new events on
(``apex.agents.run_events``: to the user's WebSocket connections); :meth:`AuditLog.flush`
does that for events written elsewhere (``run.finished``, by a trigger).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

import asyncpg

__all__ = ["EVENTS", "RUN_LOCK", "AuditLog", "Audited", "Relay"]

# The transaction lock of one run's audit trail (seed 1: the tenants' locks use seed 0).
RUN_LOCK: Final = "SELECT pg_advisory_xact_lock(hashtextextended($1::uuid::text, 1))"
# What sends a run's new events on (``apex.agents.run_events.RunEvents.relay``).
Relay = Callable[[uuid.UUID], Awaitable[None]]

EVENTS: Final = frozenset(
    {
        "run.submitted",
        "step.started",
        "llm.called",
        "llm.failed",
        "tool.called",
        "tool.denied",
        "quality.failed",
        "breaker.opened",
        "run.cancelled",
        "run.interrupted",
        "run.restored",
        "run.finished",
    }
)


class Audited(Protocol):
    """What an event is recorded against: a run's tenant and id (a ``runs.Run``)."""

    @property
    def id(self) -> uuid.UUID: ...

    @property
    def tenant_id(self) -> uuid.UUID: ...


class AuditLog:
    """The audit events table, through a pool."""

    def __init__(self, pool: asyncpg.Pool, relay: Relay | None = None) -> None:
        self._pool = pool
        self._relay = relay

    async def record(
        self, run: Audited, kind: str, *, step: str | None = None, **data: Any
    ) -> None:
        """Append one event of ``run``: ``kind`` (one of ``EVENTS``), the step, ``data``
        (JSON values)."""
        if kind not in EVENTS:
            raise ValueError(f"unknown audit event {kind!r}; known: {', '.join(sorted(EVENTS))}")
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(RUN_LOCK, run.id)
            await conn.execute(
                "INSERT INTO agent_audit_events (run_id, tenant_id, kind, step, data) "
                "VALUES ($1, $2, $3, $4, $5::jsonb)",
                run.id,
                run.tenant_id,
                kind,
                step,
                json.dumps(data),
            )
        await self.flush(run.id)

    async def flush(self, run_id: uuid.UUID) -> None:
        """Send the run's events not sent yet on (the ``relay``; best effort)."""
        if self._relay is not None:
            await self._relay(run_id)

    async def events(self, run_id: uuid.UUID, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
        """The run's events in the order they were recorded, as the route answers them:
        ``{seq, kind, step, data, at}`` (``seq`` from 1)."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT kind, step, data, created_at FROM agent_audit_events "
                "WHERE run_id = $1 AND tenant_id = $2 ORDER BY id",
                run_id,
                tenant_id,
            )
        return [
            {
                "seq": seq,
                "kind": row["kind"],
                "step": row["step"],
                "data": json.loads(row["data"]),
                "at": row["created_at"].isoformat(),
            }
            for seq, row in enumerate(rows, start=1)
        ]
