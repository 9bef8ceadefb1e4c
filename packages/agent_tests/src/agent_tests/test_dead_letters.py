"""002#6 (dead letters), 002#11 (retries) and 004#14 (message queue processing with error
handling) at L3: a job whose handling fails is retried with backoff and, after
APEX_JOB_RETRIES attempts, moved to the dead-letter stream with its reason, its run
`failed` with it; a message naming no run, or a run not stored, goes to the dead letters
at once and the queue goes on; a job whose workers keep dying ends there too
(`worker_lost`) instead of looping. Every test counts: no job lost, none run twice in
effect (one LLM request per run), nothing left pending.

How a handler is made to fail without mocks (notes-agents.md § Job queue): the test
rewrites the stored run into a workflow with no steps, which no submit lets in
(`agent_tests.queues.break_run`). The API instance runs no worker tasks; a worker
instance of the test's own Redis prefix takes the jobs once the stage is set.
"""

from __future__ import annotations

import uuid
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
    until,
)
from agent_tests.queues import break_run, counter, job_stream, mend_run, queue_report
from apex_testkit import FakeLlm, Platform, RedisNamespace, eventually, tls_context

DEAD_LETTERS = pytest.mark.bvj(
    segment="enterprise", goal="A job that cannot be done is set aside with its reason, never lost",
    mrr=12000, scenario="002#6",
)  # fmt: skip
RETRIES = pytest.mark.bvj(
    segment="enterprise", goal="A passing fault does not fail a customer's run",
    mrr=10000, scenario="002#11",
)  # fmt: skip
ERROR_HANDLING = pytest.mark.bvj(
    segment="enterprise", goal="One bad message never stops the queue",
    mrr=10000, scenario="004#14",
)  # fmt: skip
# The part of the catalogue's combined 003 agents row these tests prove.
PIPELINE_DLQ = pytest.mark.bvj(
    segment="enterprise", goal="The agent pipeline sets failed jobs aside, never loses them",
    mrr=12000, scenario="003:DLQ",
)  # fmt: skip
pytestmark = [pytest.mark.L3, PIPELINE_DLQ]


@pytest.fixture
def prefix(redis_namespace: RedisNamespace) -> str:
    """A Redis prefix (a job queue) of this test's own."""
    return f"{redis_namespace.prefix}dlq-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def api(agents_with: OpenAgents, prefix: str) -> httpx.AsyncClient:
    """apex.agents on the test's queue, taking no jobs itself."""
    return await agents_with(APEX_AGENTS_WORKERS="0", APEX_REDIS_PREFIX=prefix)


@pytest.fixture
async def runner(make_agent_user: MakeUser) -> AgentUser:
    return await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))


async def _settled(api: httpx.AsyncClient, admin_token: str, dead: int) -> dict[str, Any]:
    """The queue report once `dead` jobs are in the dead letters and nothing waits."""

    async def settled() -> dict[str, Any] | None:
        report = await queue_report(api, admin_token)
        idle = all(q == {"depth": 0, "pending": 0} for q in report["queues"].values())
        return report if idle and report["dlq"] == dead and report["scheduled"] == 0 else None

    report: dict[str, Any] | None = await eventually(
        settled, timeout=30, message="the queue settled"
    )
    assert report is not None  # eventually returns a truthy value
    return report


@DEAD_LETTERS
async def test_a_job_failing_every_attempt_is_dead_lettered_and_its_run_failed(
    clean_platform: Platform,
    api: httpx.AsyncClient,
    prefix: str,
    runner: AgentUser,
    fake_llm: FakeLlm,
    agents_db: Any,
    admin_token: str,
) -> None:
    run_id = await submit(api, runner)
    await break_run(agents_db, run_id)
    worker_settings = {
        "APEX_REDIS_PREFIX": prefix,
        "APEX_AGENTS_WORKERS": "1",
        "APEX_JOB_RETRIES": "3",
        "APEX_JOB_BACKOFF": "0.01/0.05",
    }
    async with (
        clean_platform.start("agents", **worker_settings) as worker,
        httpx.AsyncClient(base_url=worker.url, timeout=30, verify=tls_context()) as worker_client,
    ):
        run = await final_run(api, runner, run_id)
        assert (run["status"], run["error"]) == ("failed", "job_failed")
        report = await _settled(api, admin_token, dead=1)
        letter = report["dead_letters"][0]
        assert (letter["run_id"], letter["reason"], letter["attempts"]) == (
            run_id,
            "job_failed",
            "3",
        )
        assert letter["detail"]  # what went wrong, for whoever reads the dead letters
        # Three attempts: the first two queued again after their backoff.
        assert await counter(worker_client, admin_token, "apex_agents_job_retries") == 2
        assert await counter(worker_client, admin_token, "apex_agents_jobs_dead") == 1
    assert fake_llm.calls == []  # the handler failed before any LLM call
    assert await agents_db.fetchval("SELECT count(*) FROM agent_runs") == 1


@RETRIES
async def test_a_failing_attempt_is_retried_and_the_run_finishes_once(
    clean_platform: Platform,
    api: httpx.AsyncClient,
    prefix: str,
    runner: AgentUser,
    fake_llm: FakeLlm,
    agents_db: Any,
    admin_token: str,
) -> None:
    fake_llm.reply("done after the retries")
    run_id = await submit(api, runner)
    await break_run(agents_db, run_id)
    # Many attempts, a short backoff: the run outlives the fault the test ends.
    worker_settings = {
        "APEX_REDIS_PREFIX": prefix,
        "APEX_AGENTS_WORKERS": "1",
        "APEX_JOB_RETRIES": "1000",
        "APEX_JOB_BACKOFF": "0.02/0.05",
    }
    async with (
        clean_platform.start("agents", **worker_settings) as worker,
        httpx.AsyncClient(base_url=worker.url, timeout=30, verify=tls_context()) as worker_client,
    ):

        async def retried() -> bool:
            return await counter(worker_client, admin_token, "apex_agents_job_retries") >= 2

        await eventually(retried, timeout=30, message="two attempts failed and were retried")
        await mend_run(agents_db, run_id)
        run = await final_run(api, runner, run_id)
        assert (run["status"], run["result"]) == ("succeeded", "done after the retries")
        await _settled(api, admin_token, dead=0)
        assert await counter(worker_client, admin_token, "apex_agents_jobs_dead") == 0
    assert len(fake_llm.calls) == 1  # run once in effect, however many attempts failed


@ERROR_HANDLING
async def test_messages_naming_no_run_are_dead_lettered_and_the_queue_goes_on(
    clean_platform: Platform,
    api: httpx.AsyncClient,
    prefix: str,
    runner: AgentUser,
    fake_llm: FakeLlm,
    agents_db: Any,
    admin_token: str,
    redis_namespace: RedisNamespace,
) -> None:
    stream = job_stream(prefix, "normal")
    not_stored = str(uuid.uuid4())
    redis = redis_namespace.client()
    try:
        good = [await submit(api, runner, input="first good job")]
        redis.xadd(stream, {"what": "no run id at all"})
        good.append(await submit(api, runner, input="second good job"))
        redis.xadd(stream, {"run_id": "not-a-uuid"})
        redis.xadd(stream, {"run_id": not_stored})
        # Due at once in the scheduled set, but not a job the service wrote.
        redis.zadd(f"{prefix}agents:scheduled", {"not a job": 0})
        good.append(await submit(api, runner, input="third good job"))
    finally:
        redis.close()
    async with clean_platform.start("agents", APEX_REDIS_PREFIX=prefix, APEX_AGENTS_WORKERS="1"):
        for run_id in good:
            assert (await final_run(api, runner, run_id))["status"] == "succeeded"
        report = await _settled(api, admin_token, dead=4)
    letters = sorted((x["reason"], x["run_id"]) for x in report["dead_letters"])
    assert letters == [("invalid_message", "")] * 3 + [("unknown_run", not_stored)]
    texts = sorted(call.last_user_text for call in fake_llm.calls)
    assert texts == ["first good job", "second good job", "third good job"]  # each once
    assert await agents_db.fetchval("SELECT count(*) FROM agent_runs") == 3


@DEAD_LETTERS
async def test_a_job_whose_workers_keep_dying_is_dead_lettered_not_looped(
    clean_platform: Platform,
    api: httpx.AsyncClient,
    prefix: str,
    runner: AgentUser,
    fake_llm: FakeLlm,
    admin_token: str,
) -> None:
    workers = {
        "APEX_REDIS_PREFIX": prefix,
        "APEX_AGENTS_WORKERS": "1",
        "APEX_JOB_CLAIM_IDLE": "1",
        "APEX_JOB_RETRIES": "2",
    }
    fake_llm.hang_next(times=2)
    run_id = await submit(api, runner)
    for delivery in (1, 2):
        async with clean_platform.start("agents", **workers) as doomed:
            await until(lambda: fake_llm.hanging == 1, message=f"delivery {delivery} hangs")
            await doomed.kill()
        await until(lambda: fake_llm.hanging == 0, message="the killed worker's call closed")
    assert len(fake_llm.calls) == 2
    async with clean_platform.start("agents", **workers):
        run = await final_run(api, runner, run_id)
        assert (run["status"], run["error"]) == ("failed", "worker_lost")
        report = await _settled(api, admin_token, dead=1)
    letter = report["dead_letters"][0]
    assert (letter["run_id"], letter["reason"], letter["attempts"]) == (run_id, "worker_lost", "3")
    assert len(fake_llm.calls) == 2  # the third delivery was not attempted
