"""001#39 priority queue without starvation: a worker serves high before normal before
low, except that a normal or low job that has waited longer than APEX_JOB_AGING is
served before newer high ones (contract, Behaviours; notes-agents.md § Job queue).

The jobs are queued on the test's own Redis prefix by an instance that takes none, then
one worker with one consumer serves them; the order is the fake provider's request log
(counting, not timing).
"""

from __future__ import annotations

import uuid

import pytest

from agent_tests.client import READ_RUNS, RUN_AGENTS, MakeUser, OpenAgents, final_run, submit
from agent_tests.queues import queue_report
from apex_testkit import FakeLlm, Platform, RedisNamespace

PRIORITIES = pytest.mark.bvj(
    segment="enterprise", goal="Urgent runs go first and no run waits forever",
    mrr=8000, scenario="001#39",
)  # fmt: skip
pytestmark = [PRIORITIES, pytest.mark.L2, pytest.mark.L3]


@pytest.fixture
def prefix(redis_namespace: RedisNamespace) -> str:
    """A Redis prefix (a job queue) of this test's own."""
    return f"{redis_namespace.prefix}prio-{uuid.uuid4().hex[:8]}:"


async def test_high_jobs_are_served_before_normal_before_low(
    clean_platform: Platform,
    agents_with: OpenAgents,
    prefix: str,
    make_agent_user: MakeUser,
    fake_llm: FakeLlm,
    admin_token: str,
) -> None:
    runner = await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))
    api = await agents_with(APEX_AGENTS_WORKERS="0", APEX_REDIS_PREFIX=prefix)
    # Two runs share an input: `cache: false` so each is a provider call the log orders.
    runs = [
        await submit(api, runner, priority=priority, input=f"{priority} job", cache=False)
        for priority in ("low", "normal", "high", "low", "high")
    ]
    unauthorised = await api.get("/admin/queues")
    assert unauthorised.status_code == 401, unauthorised.text
    report = await queue_report(api, admin_token)
    depths = {p: q["depth"] for p, q in report["queues"].items()}
    assert depths == {"high": 2, "normal": 1, "low": 2}
    worker = {"APEX_REDIS_PREFIX": prefix, "APEX_AGENTS_WORKERS": "1", "APEX_JOB_AGING": "600"}
    async with clean_platform.start("agents", **worker):
        for run_id in runs:
            assert (await final_run(api, runner, run_id))["status"] == "succeeded"
    order = [call.last_user_text for call in fake_llm.calls]
    assert order == ["high job", "high job", "normal job", "low job", "low job"]


async def test_a_low_job_waiting_past_the_aging_window_goes_before_newer_high_jobs(
    clean_platform: Platform,
    agents_with: OpenAgents,
    prefix: str,
    make_agent_user: MakeUser,
    fake_llm: FakeLlm,
) -> None:
    highs = 16
    runner = await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))
    api = await agents_with(APEX_AGENTS_WORKERS="0", APEX_REDIS_PREFIX=prefix)
    low = await submit(api, runner, priority="low", input="the low job")
    high = [await submit(api, runner, priority="high", input=f"high job {n}") for n in range(highs)]
    # Each answer takes 25 ms at least: the first 12 high jobs take 0.3 s or more, twice
    # the 0.15 s the low job may wait behind them, so at least 4 are still waiting then.
    fake_llm.set_latency(0.025)
    worker = {"APEX_REDIS_PREFIX": prefix, "APEX_AGENTS_WORKERS": "1", "APEX_JOB_AGING": "0.15"}
    async with clean_platform.start("agents", **worker):
        for run_id in [low, *high]:
            assert (await final_run(api, runner, run_id))["status"] == "succeeded"
    order = [call.last_user_text for call in fake_llm.calls]
    assert sorted(order) == sorted(["the low job", *(f"high job {n}" for n in range(highs))])
    # Strict priority would serve it last; aged, it went while high jobs still waited.
    served_after = len(order) - 1 - order.index("the low job")
    assert served_after >= 4, order
