"""A tenant's plan limits on its runs (contract-billing.md § Entitlements).

With APEX_PLAN_LIMITS on, a new run is admitted against the entitlements apex.billing
publishes for its tenant (:mod:`apex.common.entitlements`; none published: the free
plan), read at that moment, so an upgrade applies to the very next submission:

- ``tokens_per_day`` replaces APEX_TENANT_TOKEN_BUDGET as the budget of
  :class:`apex.agents.limits.TenantLimits` (the tokens of the tenant's runs finished
  since 00:00 UTC): at or over it the submission is 402 ``plan_limit_exceeded``
  (:func:`apex.common.entitlements.refusal`);
- ``requests_per_minute``: the tenant's new runs within the last APEX_PLAN_RATE_WINDOW
  seconds (60), a sliding window in Redis (:mod:`apex.common.ratelimit`, shared by every
  instance): one more is 429 ``rate_limited`` with ``Retry-After`` and the same fields.

:meth:`PlanLimits.admit` runs where TenantLimits.admit would (``RunStore.submit``, in the
transaction that stores the run, after its idempotency key was looked up): a replayed
key is answered with its run and counts nothing, and a refused submission stores no
run, queues no job and calls no LLM. The rate is counted last, so a submission another
limit refuses does not use up the tenant's rate.
"""

from __future__ import annotations

import uuid
from typing import Final

import asyncpg
from redis.asyncio import Redis

from apex.agents.limits import LimitExceeded, TenantLimits
from apex.common import entitlements
from apex.common.http import ApiError
from apex.common.ratelimit import SlidingWindowLimiter
from apex.common.settings import RateLimit

__all__ = ["RATE", "TOKENS", "PlanLimits"]

TOKENS: Final = "tokens_per_day"
RATE: Final = "requests_per_minute"


class PlanLimits:
    """Admits a tenant's new runs against its plan (and its queued-runs cap)."""

    def __init__(self, redis: Redis, prefix: str, *, window: float, max_queued: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._window = window
        self._max_queued = max_queued
        self._rate = SlidingWindowLimiter(redis, prefix=f"{prefix}agents:plan-")

    async def admit(self, conn: asyncpg.Connection, tenant_id: uuid.UUID) -> None:
        """Raise the refusal (an ApiError, 402 or 429) unless the tenant's plan admits one
        more run (``conn`` is in the transaction that will store it)."""
        plan = await entitlements.read(self._redis, self._prefix, tenant_id)
        limits = TenantLimits(token_budget=plan.limits[TOKENS], max_queued=self._max_queued)
        try:
            await limits.admit(conn, tenant_id)
        except LimitExceeded as exc:
            if exc.code != "token_budget_exceeded":
                raise
            raise _refused(402, plan, TOKENS) from exc
        allowed = RateLimit(plan.limits[RATE], self._window)
        decision = await self._rate.hit(str(tenant_id), allowed)
        if not decision.allowed:
            raise _refused(429, plan, RATE, {"Retry-After": str(decision.retry_after)})


def _refused(
    status: int,
    plan: entitlements.Entitlements,
    limit: str,
    headers: dict[str, str] | None = None,
) -> ApiError:
    """The answer refusing a run over ``limit``: 402 ``plan_limit_exceeded``, or 429
    ``rate_limited`` for the rate, with the refusal's fields."""
    body = entitlements.refusal(plan, limit)
    error = body.pop("error")
    code = error if status == 402 else "rate_limited"
    return ApiError(status, code, body.pop("detail"), headers=headers, extra=body)
