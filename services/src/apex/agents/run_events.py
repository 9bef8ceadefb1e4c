"""Run events to the user's WebSocket connections, through the gateway (004#1).

Each event of a run's audit trail (``apex.agents.audit``) is relayed, in the trail's
order, to the connections of the user who submitted the run: appended to that user's
message log (:class:`apex.common.user_logs.UserLogs`, the log apex.gateway delivers
from, in the platform's Redis namespace), so every tab of that user, on every gateway
instance, gets ``{"type": "run.event", "seq": <the user's seq>, "run_id", "tenant_id",
"event": {"seq", "kind", "step", "data", "at"}}`` (``event`` as ``GET
/v1/runs/{id}/audit`` lists it, ``event.seq`` its place in the trail); ``run.finished``
also carries ``"run"``: the run as ``GET /v1/runs/{id}`` answers it (status, result,
usage). Nobody else gets it: the recipient is the run's ``user_id`` (the submitting
token's subject, a user of the run's tenant).

How: :meth:`RunEvents.relay` runs after each audit event is written (and after a run's
final transition, whose ``run.finished`` a trigger writes). Under a PostgreSQL advisory
lock of the run (the lock :meth:`apex.agents.audit.AuditLog.record` takes to insert, so
the events of one run are written and relayed one at a time) it reads the run's events
after its cursor (``<prefix>agents:run_events:<run_id>``: how many were relayed) and
appends each in order, moving the cursor after each. Best effort: the run's state is the
source of truth; a failure (Redis down) is logged and the events not relayed yet go with
the next relay of that run. An event can be relayed twice if the process dies between an
append and its cursor's move (clients dedup by ``event.seq``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any, Final

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from apex.agents.audit import RUN_LOCK
from apex.agents.runs import Run
from apex.common.user_logs import UserLogs, event_body

__all__ = ["RunEvents"]

log = logging.getLogger(__name__)

# A relay never holds the run's lock longer than this (Redis hanging): the rest waits
# for the next relay.
RELAY_TIMEOUT: Final = 5.0
# The cursor of a run lives a week after its last relay (runs end within
# APEX_RUN_TIMEOUT; an interrupted one resumes after a restart).
CURSOR_TTL: Final = 7 * 86_400


class RunEvents:
    """The relay of runs' audit events to their users' message logs."""

    def __init__(self, pool: asyncpg.Pool, redis: Redis, logs: UserLogs, *, prefix: str) -> None:
        self._pool = pool
        self._redis = redis
        self._logs = logs
        self._prefix = prefix

    def _cursor(self, run_id: uuid.UUID) -> str:
        return f"{self._prefix}agents:run_events:{run_id}"

    async def relay(self, run_id: uuid.UUID) -> None:
        """Relay the run's events not relayed yet; never raises but a cancellation."""
        try:
            await asyncio.wait_for(self._relay(run_id), RELAY_TIMEOUT)
        except (RedisError, OSError, TimeoutError, asyncpg.PostgresError) as exc:
            log.warning("run %s: run events not relayed: %s: %s", run_id, type(exc).__name__, exc)
        except asyncpg.InterfaceError as exc:
            log.warning("run %s: run events not relayed: %s", run_id, exc)

    async def _relay(self, run_id: uuid.UUID) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(RUN_LOCK, run_id)
            done = int(await self._redis.get(self._cursor(run_id)) or 0)
            rows = await conn.fetch(
                "SELECT kind, step, data, created_at FROM agent_audit_events "
                "WHERE run_id = $1 ORDER BY id OFFSET $2",
                run_id,
                done,
            )
            if not rows:
                return
            run = await _run(conn, run_id)
            if run is None:  # pragma: no cover - runs are never deleted
                return
            for seq, row in enumerate(rows, start=done + 1):
                await self._logs.append(run.user_id, _body(run, seq, row))
                await self._redis.set(self._cursor(run_id), seq, ex=CURSOR_TTL)


async def _run(conn: asyncpg.Connection, run_id: uuid.UUID) -> Run | None:
    row = await conn.fetchrow("SELECT * FROM agent_runs WHERE id = $1", run_id)
    return None if row is None else Run.of(row)


def _body(run: Run, seq: int, row: asyncpg.Record) -> str:
    """The logged body of the run's event number ``seq``."""
    fields: dict[str, Any] = {
        "run_id": str(run.id),
        "tenant_id": str(run.tenant_id),
        "event": {
            "seq": seq,
            "kind": row["kind"],
            "step": row["step"],
            "data": json.loads(row["data"]),
            "at": row["created_at"].isoformat(),
        },
    }
    if row["kind"] == "run.finished":
        fields["run"] = run.view()
    return event_body("run.event", **fields)
