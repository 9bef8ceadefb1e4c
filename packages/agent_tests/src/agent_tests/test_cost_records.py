"""001#48 cost tracking, and 003 "agent cost tracking": each answered LLM call's cost
reaches apex.data, attributed to its tenant, agent and model.

The rules under test (contract-agents.md § Who is asking, notes-agents.md § Costs and
degradation): each answered LLM call of a run is one usage record in apex.data, of the
run's tenant and user, kind `llm`, quantity the call's prompt + completion tokens,
`cost_micros` the call's cost (the run's, or its step's), idempotency key
`<run_id>:<step>:<call>` (a single-agent run's step is `main`, calls count from 1) and
labels `{agent, model, provider, run_id}`; a call that got no answer is not billed;
apex.data copies the records with their labels to ClickHouse, where cost per tenant,
agent and model is one query (each record once). A record apex.data can never take (a
malformed entry of the stream `<prefix>agents:costs`) moves to `<prefix>agents:costs:dead`
with a reason and holds up no other (`GET /admin/costs`: `waiting`, `dead`).
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agent_tests.client import (
    READ_RUNS,
    RUN_AGENTS,
    AgentUser,
    MakeUser,
    OpenAgents,
    final_run,
    submit,
)
from agent_tests.usage import ClickHouseCosts, UsageRow, admin_json, usage_rows
from apex_testkit import FakeLlm, RedisNamespace, eventually

COSTS = pytest.mark.bvj(
    segment="enterprise", goal="Every LLM call a tenant's agents make is billed once, in apex.data",
    mrr=15000, scenario="001#48",
)  # fmt: skip
ATTRIBUTED = pytest.mark.bvj(
    segment="enterprise", goal="Billing sees what each tenant spent per agent and model",
    mrr=15000, scenario="003:agent cost tracking",
)  # fmt: skip

ANSWER = "Paris is the capital of France."


@pytest.fixture
async def runner(make_agent_user: MakeUser) -> AgentUser:
    return await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))


@pytest.fixture
def clickhouse(clickhouse_database: str) -> Iterator[ClickHouseCosts]:
    reader = ClickHouseCosts(clickhouse_database)
    yield reader
    reader.close()


async def rows_of(agents_db: Any, run_ids: list[str], count: int) -> list[UsageRow]:
    """The usage records of `run_ids` once there are `count` of them (never more: a
    record billed twice fails the wait's check)."""

    async def arrived() -> list[UsageRow] | None:
        rows = await usage_rows(agents_db, run_ids)
        assert len(rows) <= count, rows
        return rows if len(rows) == count else None

    rows = await eventually(arrived, timeout=30, message="the cost records")
    assert rows is not None  # eventually returns a truthy value
    return rows


@COSTS
@pytest.mark.L2
@pytest.mark.L3
async def test_an_answered_call_is_one_usage_record_of_its_tenant_with_its_labels(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm, agents_db: Any
) -> None:
    fake_llm.reply(ANSWER)
    run_id = await submit(agents_client, runner)
    run = await final_run(agents_client, runner, run_id)
    assert run["status"] == "succeeded", run

    (row,) = await rows_of(agents_db, [run_id], 1)
    usage = run["usage"]
    assert row == UsageRow(
        tenant_id=runner.tenant_id or "",
        user_id=runner.user_id,
        kind="llm",
        quantity=usage["prompt_tokens"] + usage["completion_tokens"],
        cost_micros=run["cost_micros"],
        idempotency_key=f"{run_id}:main:1",
        labels={"agent": "assistant", "model": "gpt-4o-mini", "provider": "llm", "run_id": run_id},
    )
    assert run["cost_micros"] > 0


@COSTS
@pytest.mark.L2
@pytest.mark.L3
async def test_each_step_of_a_workflow_is_billed_once_and_a_failed_step_not_at_all(
    agents_with: OpenAgents,
    runner: AgentUser,
    fake_llm: FakeLlm,
    fake_llm_fallback: FakeLlm,
    agents_db: Any,
) -> None:
    # Uncached: both workflows ask a and b the same.
    client = await agents_with(APEX_LLM_RETRIES="0", APEX_LLM_CACHE_TTL="0")

    def respond(request: Any) -> str:
        if request.last_user_text.startswith("task c"):
            raise RuntimeError("c's provider broke")  # the fake answers 500
        return "fine"

    fake_llm.respond_with(respond)
    fake_llm_fallback.respond_with(respond)  # and the fallback's, alike
    flow = {
        "steps": [
            {"id": "a", "agent": "assistant", "input": "task a"},
            {"id": "b", "agent": "assistant", "input": "task b", "depends_on": ["a"]},
        ],
        "aggregate": "first",
    }
    good = await submit(client, runner, agent=None, workflow=flow)
    failing = {
        "steps": [*flow["steps"], {"id": "c", "agent": "assistant", "input": "task c",
                                   "depends_on": ["b"]}],
        "aggregate": "first",
    }  # fmt: skip
    bad = await submit(client, runner, agent=None, workflow=failing)
    good_run = await final_run(client, runner, good)
    bad_run = await final_run(client, runner, bad)
    assert (good_run["status"], bad_run["status"]) == ("succeeded", "failed")

    rows = await rows_of(agents_db, [good, bad], 4)
    assert [r.idempotency_key for r in rows] == sorted(
        [f"{good}:a:1", f"{good}:b:1", f"{bad}:a:1", f"{bad}:b:1"]
    )
    for run in (good_run, bad_run):
        billed = {
            r.idempotency_key: r.cost_micros for r in rows if r.labels["run_id"] == run["run_id"]
        }
        steps = {f"{run['run_id']}:{s['id']}:1": s["cost_micros"] for s in run["steps"]
                 if s["status"] == "succeeded"}  # fmt: skip
        assert billed == steps
        assert sum(billed.values()) == run["cost_micros"]


@COSTS
@ATTRIBUTED
@pytest.mark.L2
@pytest.mark.L3
async def test_cost_per_tenant_agent_and_model_is_a_clickhouse_query(
    agents_client: httpx.AsyncClient,
    make_agent_user: MakeUser,
    fake_llm: FakeLlm,
    clickhouse: ClickHouseCosts,
    admin_token: str,
) -> None:
    first = await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))
    second = await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))
    fake_llm.reply("one", "two, a longer answer", "three, the longest answer of them all")
    runs: dict[str, list[dict[str, Any]]] = {}
    for user in (first, first, second):
        # Uncached: the first user's second run asks what the first asked.
        run_id = await submit(agents_client, user, input=f"question of {user.user_id}", cache=False)
        run = await final_run(agents_client, user, run_id)
        assert run["status"] == "succeeded", run
        runs.setdefault(user.tenant_id or "", []).append(run)

    async def copied() -> bool:
        ids = [run["run_id"] for tenant in runs.values() for run in tenant]
        return await clickhouse.records_of(ids) == 3

    await eventually(copied, timeout=30, message="3 records in ClickHouse")
    for tenant, tenant_runs in runs.items():
        expected = (len(tenant_runs), sum(run["cost_micros"] for run in tenant_runs))
        assert await clickhouse.by_agent_model(tenant) == {("assistant", "gpt-4o-mini"): expected}
    # Delivered: nothing waits, nothing was refused.
    status = await admin_json(agents_client, admin_token, "/admin/costs")
    assert (status["waiting"], status["dead"]) == (0, 0)


@COSTS
@pytest.mark.L2
@pytest.mark.L3
async def test_a_record_apex_data_cannot_take_is_set_aside_and_holds_up_no_other(
    agents_with: OpenAgents,
    runner: AgentUser,
    fake_llm: FakeLlm,
    agents_db: Any,
    redis_namespace: RedisNamespace,
    admin_token: str,
) -> None:
    prefix = f"{redis_namespace.prefix}dead-{uuid.uuid4().hex[:8]}:"
    client = await agents_with(APEX_REDIS_PREFIX=prefix)
    redis = redis_namespace.client()
    try:
        # Oldest in the stream: an entry that is no cost record (no tenant, no tokens).
        redis.xadd(f"{prefix}agents:costs", {"run_id": "not-a-record"})
        fake_llm.reply(ANSWER)
        run_id = await submit(client, runner)
        assert (await final_run(client, runner, run_id))["status"] == "succeeded"

        (row,) = await rows_of(agents_db, [run_id], 1)
        assert row.idempotency_key == f"{run_id}:main:1"

        async def set_aside() -> dict[str, Any] | None:
            status = await admin_json(client, admin_token, "/admin/costs")
            return status if (status["waiting"], status["dead"]) == (0, 1) else None

        await eventually(set_aside, timeout=30, message="the malformed entry set aside")
        # decode_responses: ids and fields are str.
        dead: list[tuple[str, dict[str, str]]] = redis.xrange(f"{prefix}agents:costs:dead")  # type: ignore[assignment]
        ((_, fields),) = dead
        assert fields["run_id"] == "not-a-record"
        assert fields["reason"].startswith("malformed entry")
    finally:
        redis.close()


def _entry(user: AgentUser, run_id: str, occurred_at: str) -> dict[str, str]:
    """A cost record of `user`'s tenant as the stream holds it (one call of 15 tokens)."""
    assert user.tenant_id is not None
    return {
        "tenant_id": user.tenant_id, "user_id": user.user_id, "run_id": run_id,
        "step": "main", "call": "1", "agent": "assistant", "model": "gpt-4o-mini",
        "provider": "llm", "prompt_tokens": "10", "completion_tokens": "5",
        "cost_micros": "150", "occurred_at": occurred_at,
    }  # fmt: skip


@COSTS
@pytest.mark.L2
@pytest.mark.L3
async def test_a_record_apex_data_refuses_is_set_aside_and_the_rest_of_its_batch_stored(
    agents_with: OpenAgents,
    runner: AgentUser,
    agents_db: Any,
    redis_namespace: RedisNamespace,
    admin_token: str,
) -> None:
    """A tenant's records of one delivery cycle go to apex.data as one batch, which is
    stored whole or refused whole: one record apex.data refuses (422: its `occurred_at`
    is no time) must cost the others of its batch nothing."""
    prefix = f"{redis_namespace.prefix}refused-{uuid.uuid4().hex[:8]}:"
    # Written to the stream here, not by a run: the delivery finds them at its next look
    # (APEX_COST_INTERVAL, 1 s by default), not woken by a record of its own.
    client = await agents_with(APEX_REDIS_PREFIX=prefix, APEX_COST_INTERVAL="0.05")
    refused, stored = str(uuid.uuid4()), str(uuid.uuid4())
    now = datetime.datetime.now(datetime.UTC).isoformat()
    redis = redis_namespace.client()
    try:
        # In one transaction, so that one delivery cycle reads both.
        with redis.pipeline(transaction=True) as pipe:
            pipe.xadd(f"{prefix}agents:costs", _entry(runner, refused, "not a time"))  # type: ignore[arg-type]
            pipe.xadd(f"{prefix}agents:costs", _entry(runner, stored, now))  # type: ignore[arg-type]
            pipe.execute()

        async def settled() -> bool:
            status = await admin_json(client, admin_token, "/admin/costs")
            return bool((status["waiting"], status["dead"]) == (0, 1))

        await eventually(settled, timeout=30, message="both records settled")
        (row,) = await rows_of(agents_db, [stored], 1)
        assert (row.idempotency_key, row.quantity, row.cost_micros) == (f"{stored}:main:1", 15, 150)
        assert await usage_rows(agents_db, [refused]) == []
        # decode_responses: ids and fields are str.
        dead: list[tuple[str, dict[str, str]]] = redis.xrange(f"{prefix}agents:costs:dead")  # type: ignore[assignment]
        ((_, fields),) = dead
        assert fields["run_id"] == refused
        assert fields["reason"].startswith("HTTP 422"), fields["reason"]
    finally:
        redis.close()
