"""Per-tenant limits on runs: what a tenant may submit, checked before a run is stored.

- ``APEX_TENANT_TOKEN_BUDGET``: the tokens (prompt + completion) of the tenant's runs
  finished since 00:00 UTC today; a submit when they already reach the budget is
  refused ``token_budget_exceeded``.
- ``APEX_TENANT_MAX_QUEUED``: a submit when the tenant already has that many runs queued
  is refused ``too_many_runs``.

Both are checked under a transaction lock of the tenant (the insert's transaction), so
concurrent submits of one tenant cannot pass the queued cap together. How many of a
tenant's runs run at once (``APEX_TENANT_MAX_RUNNING``) is the workers' business
(:meth:`apex.agents.runs.RunStore.start_within`): the others wait queued.
"""

from __future__ import annotations

import uuid

import asyncpg

__all__ = ["LimitExceeded", "TenantLimits"]


class LimitExceeded(Exception):
    """A submit refused by a tenant limit: ``code`` is the contract's error (429)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class TenantLimits:
    """The token budget and the queued-runs cap of every tenant."""

    def __init__(self, *, token_budget: int, max_queued: int) -> None:
        self.token_budget = token_budget
        self.max_queued = max_queued

    async def admit(self, conn: asyncpg.Connection, tenant_id: uuid.UUID) -> None:
        """Raise LimitExceeded unless the tenant may queue one more run (``conn`` is in
        the transaction that will store it)."""
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1::uuid::text, 0))", tenant_id
        )
        spent = await conn.fetchval(
            "SELECT coalesce(sum(prompt_tokens + completion_tokens), 0) FROM agent_runs "
            "WHERE tenant_id = $1 AND finished_at >= "
            "date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
            tenant_id,
        )
        if spent >= self.token_budget:
            raise LimitExceeded(
                "token_budget_exceeded",
                f"the tenant's runs used {spent} tokens today (UTC); "
                f"the budget is {self.token_budget}",
            )
        queued = await conn.fetchval(
            "SELECT count(*) FROM agent_runs WHERE tenant_id = $1 AND status = 'queued'",
            tenant_id,
        )
        if queued >= self.max_queued:
            raise LimitExceeded(
                "too_many_runs", f"the tenant has {queued} runs queued; at most {self.max_queued}"
            )
