"""Runs' states, persisted with versions (``agent_run_states``, migration 0020), and restore.

A state is what ``agent_runs`` holds of a run's progress: its status, its step records
(a workflow's steps; a single-agent run's one step ``main``), its result and error.
:meth:`StateStore.snapshot` copies it as the run's next version (1, 2, ...): at submit,
after every change of a step record, and at every transition (finished, cancelled,
interrupted, restored). :meth:`StateStore.restore` sets a run that is not active back to
one of its versions: the steps that had succeeded in it are kept (their answers reused,
no LLM call), the others pending again, the run ``queued`` with its usage and cost
cleared (the worker sums them again from the steps). Every read names the tenant.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any, Final

import asyncpg

from apex.agents.runs import Usage

__all__ = ["RestoreError", "State", "StateStore", "pending", "step_record", "usage_of"]

# A run in one of these states runs (or will) already: restoring it is a conflict.
_ACTIVE: Final = ("queued", "running", "interrupted")
# Two snapshots of one run racing for a version number: the loser takes the next one.
_SNAPSHOT_TRIES: Final = 5


@dataclasses.dataclass(frozen=True)
class State:
    """One version of a run's state."""

    run_id: uuid.UUID
    version: int
    latest: int
    status: str
    steps: list[dict[str, Any]]
    result: str | None
    error: str | None
    at: str

    def view(self) -> dict[str, Any]:
        """The state as ``GET /v1/runs/{id}/state`` answers it."""
        return {
            "run_id": str(self.run_id),
            "version": self.version,
            "latest": self.latest,
            "status": self.status,
            "steps": self.steps,
            "result": self.result,
            "error": self.error,
            "at": self.at,
        }


class RestoreError(Exception):
    """A restore refused: ``status`` (404, 409) and the contract's error code."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def step_record(
    step_id: str,
    agent: str | None,
    *,
    status: str = "pending",
    result: str | None = None,
    error: str | None = None,
    usage: Usage | None = None,
) -> dict[str, Any]:
    """A step's record as runs store it (``steps``): its id, agent, status, answer or
    error, and the usage, cost, provider, attempts and tool calls of its answered call."""
    return {
        "id": step_id,
        "agent": agent,
        "status": status,
        "result": result,
        "error": error,
        "usage": {
            "prompt_tokens": 0 if usage is None else usage.prompt_tokens,
            "completion_tokens": 0 if usage is None else usage.completion_tokens,
        },
        "cost_micros": 0 if usage is None else usage.cost_micros,
        "provider": None if usage is None else usage.provider,
        "attempts": 0 if usage is None else usage.attempts,
        "tool_calls": [] if usage is None else list(usage.tool_calls),
        "cached": False if usage is None else usage.cached,
    }


def pending(record: dict[str, Any]) -> dict[str, Any]:
    """A step record as it is before its step runs (its id and agent kept)."""
    return step_record(record["id"], record.get("agent"))


def usage_of(record: dict[str, Any]) -> Usage:
    """The usage a succeeded step's record holds (reused without a second call)."""
    return Usage(
        prompt_tokens=record["usage"]["prompt_tokens"],
        completion_tokens=record["usage"]["completion_tokens"],
        cost_micros=record["cost_micros"],
        provider=record["provider"],
        attempts=record["attempts"],
        tool_calls=tuple(record.get("tool_calls") or ()),
        cached=bool(record.get("cached", False)),
    )


class StateStore:
    """The run states table, through a pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def snapshot(self, run_id: uuid.UUID) -> int | None:
        """Persist the run's state as it is now as its next version; that version (None:
        no such run)."""
        for _ in range(_SNAPSHOT_TRIES):
            try:
                async with self._pool.acquire() as conn:
                    version: int | None = await conn.fetchval(
                        "INSERT INTO agent_run_states "
                        "(run_id, version, tenant_id, status, steps, result, error) "
                        "SELECT id, COALESCE((SELECT max(version) FROM agent_run_states "
                        "WHERE run_id = $1), 0) + 1, tenant_id, status, steps, result, error "
                        "FROM agent_runs WHERE id = $1 RETURNING version",
                        run_id,
                    )
                return version
            except asyncpg.UniqueViolationError:
                continue
        raise RuntimeError(f"run {run_id}: no free state version after {_SNAPSHOT_TRIES} tries")

    async def get(
        self, run_id: uuid.UUID, tenant_id: uuid.UUID, version: int | None = None
    ) -> State | None:
        """Version ``version`` (default: the latest) of the tenant's run's state."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT version, status, steps, result, error, created_at, "
                "(SELECT max(version) FROM agent_run_states WHERE run_id = $1) AS latest "
                "FROM agent_run_states WHERE run_id = $1 AND tenant_id = $2 "
                "AND ($3::integer IS NULL OR version = $3) ORDER BY version DESC LIMIT 1",
                run_id,
                tenant_id,
                version,
            )
        if row is None:
            return None
        return State(
            run_id=run_id,
            version=row["version"],
            latest=row["latest"],
            status=row["status"],
            steps=json.loads(row["steps"]),
            result=row["result"],
            error=row["error"],
            at=row["created_at"].isoformat(),
        )

    async def restore(self, run_id: uuid.UUID, tenant_id: uuid.UUID, version: int) -> str:
        """Set the tenant's run back to ``version`` and mark it queued (the caller queues
        its job); its priority. RestoreError: no such run or version (404), an active run
        (409)."""
        async with self._pool.acquire() as conn, conn.transaction():
            run = await conn.fetchrow(
                "SELECT status, priority FROM agent_runs WHERE id = $1 AND tenant_id = $2 "
                "FOR UPDATE",
                run_id,
                tenant_id,
            )
            if run is None:
                raise RestoreError(404, "not_found", "no such run")
            steps = await conn.fetchval(
                "SELECT steps FROM agent_run_states WHERE run_id = $1 AND version = $2",
                run_id,
                version,
            )
            if steps is None:
                raise RestoreError(404, "not_found", f"the run has no state version {version}")
            if run["status"] in _ACTIVE:
                raise RestoreError(
                    409, "run_active", f"the run is {run['status']}: it cannot be restored now"
                )
            kept = [
                record if record.get("status") == "succeeded" else pending(record)
                for record in json.loads(steps)
            ]
            await conn.execute(
                "UPDATE agent_runs SET status = 'queued', steps = $2::jsonb, result = NULL, "
                "error = NULL, conflicts = '[]'::jsonb, prompt_tokens = 0, "
                "completion_tokens = 0, cost_micros = 0, provider_path = '[]'::jsonb, "
                "finished_at = NULL, updated_at = now() WHERE id = $1",
                run_id,
                json.dumps(kept),
            )
        return str(run["priority"])
