"""002#6 message queue on Redis Streams with a consumer group, and 001#94 failure
injection: a worker killed mid-job leaves its job pending; another worker claims it after
APEX_JOB_CLAIM_IDLE (XAUTOCLAIM) and finishes the run once. L3: the worker is a process,
killed with SIGKILL.

The test's instances use a Redis prefix of their own, so that no other apex.agents
process of this pytest worker (started by earlier tests, still consuming the worker's
queue) takes the job.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from agent_tests.client import (
    READ_RUNS,
    RUN_AGENTS,
    MakeUser,
    OpenAgents,
    final_run,
    submit,
    until,
)
from apex_testkit import (
    FakeLlm,
    Platform,
    RedisNamespace,
    completion_tokens,
    prompt_tokens,
    tls_context,
)

QUEUE = pytest.mark.bvj(
    segment="enterprise", goal="No agent run is lost or run twice when a worker dies",
    mrr=12000, scenario="002#6",
)  # fmt: skip
# 001#94 failure injection: a worker killed mid-call (the injected failure), the run's
# calls and usage counted (its impact), another worker finishing it once (recovery).
INJECTION = pytest.mark.bvj(
    segment="enterprise", goal="A worker killed mid-run costs the customer nothing",
    mrr=8000, scenario="001#94",
)  # fmt: skip
pytestmark = [QUEUE, INJECTION, pytest.mark.L3]


async def test_a_killed_workers_job_is_claimed_and_finished_once(
    clean_platform: Platform,
    agents_with: OpenAgents,
    make_agent_user: MakeUser,
    fake_llm: FakeLlm,
    agents_db: Any,
    redis_namespace: RedisNamespace,
) -> None:
    prefix = f"{redis_namespace.prefix}kill-{uuid.uuid4().hex[:8]}:"
    queue = {"APEX_REDIS_PREFIX": prefix}
    workers = {**queue, "APEX_AGENTS_WORKERS": "1", "APEX_JOB_CLAIM_IDLE": "1"}
    runner = await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))
    # The API instance takes no jobs itself (no worker tasks).
    api = await agents_with(APEX_AGENTS_WORKERS="0", **queue)
    fake_llm.hang_next()
    fake_llm.reply("finished by the second worker")
    async with clean_platform.start("agents", **workers) as doomed:
        run_id = await submit(api, runner)
        await until(lambda: fake_llm.hanging == 1, message="the first worker's call hangs")
        await doomed.kill()
    await until(lambda: fake_llm.hanging == 0, message="the killed worker's call closed")
    status = await api.get(f"/v1/runs/{run_id}", headers=runner.headers)
    assert status.json()["status"] == "running", status.text
    async with (
        clean_platform.start("agents", **workers) as rescuer,
        httpx.AsyncClient(base_url=rescuer.url, timeout=30, verify=tls_context()) as client,
    ):
        run = await final_run(client, runner, run_id)
        assert (run["status"], run["result"]) == ("succeeded", "finished by the second worker")
        calls = fake_llm.calls
        assert len(calls) == 2  # the killed worker's, then the rescuer's: no third
        assert run["usage"] == {
            "prompt_tokens": prompt_tokens(calls[1].json["messages"]),
            "completion_tokens": completion_tokens("finished by the second worker"),
        }
        # Acknowledged: nothing left pending for a third worker to claim.
        redis = redis_namespace.client()
        stream = f"{prefix}agents:jobs:normal"
        try:
            await until(
                lambda: redis.xpending(stream, "workers")["pending"] == 0,
                message="the job acknowledged",
            )
        finally:
            redis.close()
    assert await agents_db.fetchval("SELECT count(*) FROM agent_runs") == 1
    assert len(fake_llm.calls) == 2
