"""004#1 cold start: a freshly started apex.agents instance (L2: a new app and lifespan;
L3: a new `python -m apex.agents` process) answers its very first run correctly.

The rule under test (contract-agents.md § Routes, notes-agents.md § Tracing, metrics and
performance): an instance is ready once `/healthz` answers 200; its first run then
succeeds with the provider's answer and the provider's usage, through the instance's own
worker tasks (its own job queue here, so no other instance's worker takes the job). How
long it takes is a benchmark (`test_agent_bench`), never asserted here.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from agent_tests.client import READ_RUNS, RUN_AGENTS, MakeUser, final_run, run_body, submit
from agent_tests.prometheus import Samples, sample, scrape
from apex_testkit import (
    FakeLlm,
    Platform,
    RedisNamespace,
    completion_tokens,
    eventually,
    prompt_tokens,
    tls_context,
)

COLD = pytest.mark.bvj(
    segment="early", goal="A new agents instance answers its first user at once",
    mrr=10000, scenario="004#1",
)  # fmt: skip
pytestmark = [COLD, pytest.mark.L2, pytest.mark.L3]

ANSWER = "The first answer of a fresh instance."


async def test_a_fresh_instance_answers_its_first_run(
    clean_platform: Platform,
    make_agent_user: MakeUser,
    fake_llm: FakeLlm,
    redis_namespace: RedisNamespace,
    admin_token: str,
) -> None:
    runner = await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))
    fake_llm.reply(ANSWER)
    settings = {
        "APEX_AGENTS_WORKERS": "1",
        "APEX_REDIS_PREFIX": f"{redis_namespace.prefix}cold-{uuid.uuid4().hex[:8]}:",
    }
    async with (
        clean_platform.cold_start("agents", **settings) as fresh,
        httpx.AsyncClient(base_url=fresh.url, timeout=30, verify=tls_context()) as client,
    ):
        health = await client.get("/healthz")
        assert health.status_code == 200, health.text
        run = await final_run(client, runner, await submit(client, runner))

        async def counted() -> Samples | None:
            # The worker counts a run just after storing its end, which a read may see first.
            samples = await scrape(client, admin_token)
            done = sample(samples, "apex_agents_runs_total", outcome="succeeded")
            return samples if done else None

        samples = await eventually(counted, timeout=10, message="the run counted in /metrics")
        assert samples is not None  # eventually returns a truthy value
    assert (run["status"], run["result"], run["error"]) == ("succeeded", ANSWER, None)
    (call,) = fake_llm.calls
    assert call.json["messages"][-1] == {"role": "user", "content": run_body()["input"]}
    assert run["usage"] == {
        "prompt_tokens": prompt_tokens(call.json["messages"]),
        "completion_tokens": completion_tokens(ANSWER),
    }
    # A fresh process: this run is the first it ever counted.
    assert sample(samples, "apex_agents_runs_total", outcome="submitted") == 1
    assert sample(samples, "apex_agents_runs_total", outcome="succeeded") == 1
