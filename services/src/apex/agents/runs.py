"""Runs and their state machine, persisted in PostgreSQL (``agent_runs``, migrations 0015,
0016, 0017 and 0022).

A run is of one agent or of a workflow (its declaration, each step's record and the
merge's conflicting keys are kept with it).

A run is ``queued`` when submitted, ``running`` once a worker took its job, then one of
``succeeded``, ``failed``, ``rejected`` (by the quality gate) or ``cancelled`` (the final
states: a final run never changes again). A running run whose worker shut down is
``interrupted`` until a worker takes it again (it resumes from its last state:
``apex.agents.state``). Each transition is one conditional UPDATE, so two workers holding
the same job (a redelivery) finish it once, and a cancel wins over a late answer. Every
read and write names the tenant, so another tenant's run is not found.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

import asyncpg

__all__ = ["FINAL", "Admit", "Run", "RunStore", "Usage", "WorkflowOutcome"]

FINAL: Final = frozenset({"succeeded", "failed", "rejected", "cancelled", "timed_out"})
_ACTIVE: Final = ("queued", "running", "interrupted")
# A run ended from outside its supervisor (cancelled, timed out, failed) closes its step
# records too: a step in flight is `cancelled`, one not started `not_run` (as the
# supervisor records them when a step fails), so no final run shows a step `running`.
_CLOSE_STEPS: Final = (
    "steps = COALESCE((SELECT jsonb_agg(CASE s->>'status' "
    "WHEN 'running' THEN s || '{\"status\": \"cancelled\"}'::jsonb "
    "WHEN 'pending' THEN s || '{\"status\": \"not_run\"}'::jsonb ELSE s END ORDER BY i) "
    "FROM jsonb_array_elements(steps) WITH ORDINALITY AS t(s, i)), '[]'::jsonb)"
)


# Checks a new run of a tenant before it is stored (in the insert's transaction), raising
# to refuse it: apex.agents.limits.TenantLimits.admit.
Admit = Callable[[asyncpg.Connection, uuid.UUID], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class Usage:
    """What a run's LLM calls used, by the provider's report, and what it cost."""

    prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    provider: str
    attempts: int
    tool_calls: tuple[dict[str, Any], ...] = ()
    # Answered from the response cache (no provider call: zero tokens, zero cost).
    cached: bool = False


@dataclasses.dataclass(frozen=True)
class WorkflowOutcome:
    """How a workflow ended: its status and result or error, each step's record, the
    conflicting keys of a merge, and its steps' usage summed."""

    status: str
    result: str | None
    error: str | None
    steps: list[dict[str, Any]]
    conflicts: tuple[str, ...]
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    provider_path: list[str]
    attempts: int


@dataclasses.dataclass(frozen=True)
class Run:
    """One run as stored."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    user_id: str
    agent: str | None
    input: str
    priority: str
    status: str
    result: str | None
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    provider_path: list[str]
    workflow: dict[str, Any] | None = None
    steps: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    conflicts: list[str] = dataclasses.field(default_factory=list)
    agent_version: str | None = None
    permissions: frozenset[str] = frozenset()
    tool_calls: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    use_cache: bool = True
    cached: bool = False
    quality_reasons: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def of(cls, row: asyncpg.Record) -> Run:
        return cls(
            id=row["id"],
            tenant_id=row["tenant_id"],
            user_id=row["user_id"],
            agent=row["agent"],
            input=row["input"],
            priority=row["priority"],
            status=row["status"],
            result=row["result"],
            error=row["error"],
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
            cost_micros=row["cost_micros"],
            provider_path=json.loads(row["provider_path"]),
            workflow=None if row["workflow"] is None else json.loads(row["workflow"]),
            steps=json.loads(row["steps"]),
            conflicts=json.loads(row["conflicts"]),
            agent_version=row["agent_version"],
            permissions=frozenset(json.loads(row["permissions"])),
            tool_calls=json.loads(row["tool_calls"]),
            use_cache=row["use_cache"],
            cached=row["cached"],
            quality_reasons=json.loads(row["quality_reasons"]),
        )

    def view(self) -> dict[str, Any]:
        """The run as `GET /v1/runs/{id}` answers it."""
        view: dict[str, Any] = {
            "run_id": str(self.id),
            "agent": self.agent,
            "agent_version": self.agent_version,
            "status": self.status,
            "result": self.result,
            "error": self.error,
            "steps": self.steps,
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
            },
            "cost_micros": self.cost_micros,
            "provider_path": self.provider_path,
            "tool_calls": self.tool_calls,
            "errors": self.errors(),
            "cached": self.cached,
            "quality_reasons": self.quality_reasons,
        }
        if self.workflow is not None:
            view["workflow"] = self.workflow
            view["conflicts"] = self.conflicts
            failed = [step["id"] for step in self.steps if step.get("status") == "failed"]
            view["failed_step"] = failed[0] if failed else None
            ran = [step for step in self.steps if step.get("status") == "succeeded"]
            view["cached"] = bool(ran) and all(step.get("cached") for step in ran)
        return view

    def errors(self) -> list[dict[str, str | None]]:
        """Error aggregation (001#88): ``{step, error}`` of each failed step in declared
        order (a single-agent run's one step is ``main``); a run that failed or timed out
        apart from any step (a workflow's timeout) adds ``{step: null, error}``."""
        if self.workflow is None:
            failed = self.status in ("failed", "timed_out") and self.error is not None
            return [{"step": "main", "error": self.error}] if failed else []
        errors: list[dict[str, str | None]] = [
            {"step": step["id"], "error": step.get("error")}
            for step in self.steps
            if step.get("status") == "failed"
        ]
        if not errors and self.status in ("failed", "timed_out"):
            errors.append({"step": None, "error": self.error})
        return errors


_COLUMNS: Final = (
    "id, tenant_id, user_id, agent, input, priority, status, result, error, prompt_tokens, "
    "completion_tokens, cost_micros, provider_path, workflow, steps, conflicts, agent_version, "
    "permissions, tool_calls, use_cache, cached, quality_reasons"
)


class RunStore:
    """The runs table, through a pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def ping(self) -> None:
        """Raise unless PostgreSQL answers."""
        async with self._pool.acquire() as conn:
            await conn.fetchval("SELECT 1")

    async def submit(
        self,
        *,
        tenant_id: uuid.UUID,
        user_id: str,
        agent: str | None,
        input_text: str,
        priority: str,
        idempotency_key: str,
        workflow: dict[str, Any] | None = None,
        agent_version: str | None = None,
        permissions: frozenset[str] = frozenset(),
        use_cache: bool = True,
        admit: Admit | None = None,
    ) -> tuple[Run, bool]:
        """The new queued run (of an agent, or of a workflow), True; or the tenant's run
        with this key, False. ``admit`` (the tenant's limits) runs before a new run is
        stored, in its transaction, and raises to refuse it."""
        async with self._pool.acquire() as conn, conn.transaction():
            if admit is not None:
                row = await conn.fetchrow(
                    f"SELECT {_COLUMNS} FROM agent_runs "  # noqa: S608 - constant columns
                    "WHERE tenant_id = $1 AND idempotency_key = $2",
                    tenant_id,
                    idempotency_key,
                )
                if row is not None:
                    return Run.of(row), False
                await admit(conn, tenant_id)
            row = await conn.fetchrow(
                f"INSERT INTO agent_runs (id, tenant_id, user_id, agent, input, priority, "  # noqa: S608 - constant columns
                f"idempotency_key, workflow, agent_version, permissions, use_cache) "
                f"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11) "
                f"ON CONFLICT (tenant_id, idempotency_key) DO NOTHING RETURNING {_COLUMNS}",
                uuid.uuid4(),
                tenant_id,
                user_id,
                agent,
                input_text,
                priority,
                idempotency_key,
                None if workflow is None else json.dumps(workflow),
                agent_version,
                json.dumps(sorted(permissions)),
                use_cache,
            )
            if row is not None:
                return Run.of(row), True
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM agent_runs "  # noqa: S608 - constant columns
                "WHERE tenant_id = $1 AND idempotency_key = $2",
                tenant_id,
                idempotency_key,
            )
        if row is None:  # pragma: no cover - the conflicting row cannot vanish: no deletes
            raise RuntimeError("the run holding this idempotency key disappeared")
        return Run.of(row), False

    async def get(self, run_id: uuid.UUID, tenant_id: uuid.UUID | None = None) -> Run | None:
        """The run, if it exists (and belongs to ``tenant_id`` when given)."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM agent_runs "  # noqa: S608 - constant columns
                "WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)",
                run_id,
                tenant_id,
            )
        return None if row is None else Run.of(row)

    async def start(self, run_id: uuid.UUID) -> Run | None:
        """Mark the run running; None when it is final already (cancelled, or finished by
        another delivery of its job). A running run is taken again: a redelivered job
        whose worker died."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                f"UPDATE agent_runs SET status = 'running', updated_at = now() "  # noqa: S608
                f"WHERE id = $1 AND status = ANY($2::text[]) RETURNING {_COLUMNS}",
                run_id,
                list(_ACTIVE),
            )
        return None if row is None else Run.of(row)

    async def start_within(self, run_id: uuid.UUID, max_running: int) -> Run | str:
        """Mark the run running unless its tenant has ``max_running`` runs running (a
        running run, redelivered, is taken again). The run, or why not: ``"busy"`` (the
        tenant is at its limit), ``"final"``, ``"missing"`` (no such run). The tenant's
        count is read under a transaction lock of the tenant, so two workers never both
        take its last slot."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT tenant_id, status FROM agent_runs WHERE id = $1", run_id
            )
            if row is None:
                return "missing"
            if row["status"] not in _ACTIVE:
                return "final"
            if row["status"] in ("queued", "interrupted"):  # not yet counted as running
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended($1::uuid::text, 0))",
                    row["tenant_id"],
                )
                running = await conn.fetchval(
                    "SELECT count(*) FROM agent_runs WHERE tenant_id = $1 AND status = 'running'",
                    row["tenant_id"],
                )
                if running >= max_running:
                    return "busy"
            started = await conn.fetchrow(
                f"UPDATE agent_runs SET status = 'running', updated_at = now() "  # noqa: S608
                f"WHERE id = $1 AND status = ANY($2::text[]) RETURNING {_COLUMNS}",
                run_id,
                list(_ACTIVE),
            )
        return "final" if started is None else Run.of(started)

    async def requeue(self, run_id: uuid.UUID) -> bool:
        """Put a running run back to queued (its job waits for a retry); False when it is
        not running."""
        async with self._pool.acquire() as conn:
            outcome = await conn.execute(
                "UPDATE agent_runs SET status = 'queued', updated_at = now() "
                "WHERE id = $1 AND status = 'running'",
                run_id,
            )
        return bool(outcome == "UPDATE 1")

    async def succeed(self, run_id: uuid.UUID, result: str, usage: Usage) -> bool:
        """Record the answer and its usage; False when the run was final already."""
        async with self._pool.acquire() as conn:
            status = await conn.execute(
                "UPDATE agent_runs SET status = 'succeeded', result = $2, prompt_tokens = $3, "
                "completion_tokens = $4, cost_micros = $5, "
                "provider_path = provider_path || jsonb_build_array($6::text), "
                "llm_attempts = llm_attempts + $7, tool_calls = $8::jsonb, cached = $9, "
                "updated_at = now(), finished_at = now() WHERE id = $1 AND status = 'running'",
                run_id,
                result,
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.cost_micros,
                usage.provider,
                usage.attempts,
                json.dumps(list(usage.tool_calls)),
                usage.cached,
            )
        return bool(status == "UPDATE 1")

    async def reject(self, run_id: uuid.UUID, reasons: list[str], usage: Usage) -> bool:
        """Mark the run ``rejected`` by the quality gate (error ``quality_failed``, no
        result) with the reasons and the usage of every attempt (billed all the same) and
        the tool calls they made; False when the run was final already."""
        async with self._pool.acquire() as conn:
            status = await conn.execute(
                "UPDATE agent_runs SET status = 'rejected', error = 'quality_failed', "
                "quality_reasons = $2::jsonb, prompt_tokens = $3, completion_tokens = $4, "
                "cost_micros = $5, provider_path = provider_path || jsonb_build_array($6::text), "
                "llm_attempts = llm_attempts + $7, tool_calls = $8::jsonb, updated_at = now(), "
                "finished_at = now() WHERE id = $1 AND status = 'running'",
                run_id,
                json.dumps(reasons),
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.cost_micros,
                usage.provider,
                usage.attempts,
                json.dumps(list(usage.tool_calls)),
            )
        return bool(status == "UPDATE 1")

    async def save_steps(self, run_id: uuid.UUID, steps: list[dict[str, Any]]) -> bool:
        """Record a running workflow's steps as they are now; False when it is final."""
        async with self._pool.acquire() as conn:
            outcome = await conn.execute(
                "UPDATE agent_runs SET steps = $2::jsonb, updated_at = now() "
                "WHERE id = $1 AND status = 'running'",
                run_id,
                json.dumps(steps),
            )
        return bool(outcome == "UPDATE 1")

    async def finish_workflow(self, run_id: uuid.UUID, outcome: WorkflowOutcome) -> bool:
        """Record a workflow's end: status, result or error, its steps, conflicts and the
        sum of its steps' usage; False when the run was final already."""
        async with self._pool.acquire() as conn:
            status = await conn.execute(
                "UPDATE agent_runs SET status = $2, result = $3, error = $4, steps = $5::jsonb, "
                "conflicts = $6::jsonb, prompt_tokens = $7, completion_tokens = $8, "
                "cost_micros = $9, provider_path = $10::jsonb, llm_attempts = llm_attempts + $11, "
                "updated_at = now(), finished_at = now() WHERE id = $1 AND status = 'running'",
                run_id,
                outcome.status,
                outcome.result,
                outcome.error,
                json.dumps(outcome.steps),
                json.dumps(list(outcome.conflicts)),
                outcome.prompt_tokens,
                outcome.completion_tokens,
                outcome.cost_micros,
                json.dumps(outcome.provider_path),
                outcome.attempts,
            )
        return bool(status == "UPDATE 1")

    async def fail(self, run_id: uuid.UUID, error: str, *, status: str = "failed") -> bool:
        """Mark the run ``status`` (failed, timed_out) with ``error``; False when final."""
        async with self._pool.acquire() as conn:
            outcome = await conn.execute(
                f"UPDATE agent_runs SET status = $2, error = $3, {_CLOSE_STEPS}, "  # noqa: S608 - constant
                "updated_at = now(), finished_at = now() "
                "WHERE id = $1 AND status = ANY($4::text[])",
                run_id,
                status,
                error,
                list(_ACTIVE),
            )
        return bool(outcome == "UPDATE 1")

    async def interrupt(self, run_id: uuid.UUID) -> bool:
        """Mark a running run ``interrupted`` (its worker shuts down; its steps as last
        saved); False when it is not running."""
        async with self._pool.acquire() as conn:
            outcome = await conn.execute(
                "UPDATE agent_runs SET status = 'interrupted', updated_at = now() "
                "WHERE id = $1 AND status = 'running'",
                run_id,
            )
        return bool(outcome == "UPDATE 1")

    async def cancel(self, run_id: uuid.UUID, tenant_id: uuid.UUID) -> Run | None:
        """Cancel the tenant's run if it is not final; the run as it is now (None: no
        such run of this tenant)."""
        async with self._pool.acquire() as conn:
            await conn.execute(
                "UPDATE agent_runs SET status = 'cancelled', error = 'cancelled', "  # noqa: S608
                f"{_CLOSE_STEPS}, updated_at = now(), finished_at = now() "
                "WHERE id = $1 AND tenant_id = $2 AND status = ANY($3::text[])",
                run_id,
                tenant_id,
                list(_ACTIVE),
            )
        return await self.get(run_id, tenant_id)
