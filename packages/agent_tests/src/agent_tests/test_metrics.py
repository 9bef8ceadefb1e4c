"""001#41 metrics collection and export: apex.agents' `/metrics` (Prometheus text, read
with prometheus_client's own parser) moves by exactly what a test's runs did.

The rules under test (notes-agents.md: `/metrics`; § Tracing, metrics and performance):
`/metrics` answers the admin token only; `apex_agents_runs_total{outcome}` counts runs
submitted and ended by outcome, `apex_agents_llm_calls_total{provider,result}` LLM
requests (ok, retried, failed), `apex_agents_tokens_total{model,kind}` the provider's
reported usage, `apex_agents_cost_micros_total{model}` the runs' cost, and the histogram
`apex_agents_run_seconds` one observation per job a worker worked to its run's end, of
at least the provider's latency; `apex_agents_gc_pause_seconds{generation}` each garbage
collection of the process (001#85). Counters are per process, so each test compares two
scrapes of its own instance. A worker counts and times a run just after the run's final
state is stored, so a client that saw the state final waits for the timing, the last of
them, before it compares.
"""

from __future__ import annotations

import gc

import httpx
import pytest

from agent_tests.client import (
    READ_RUNS,
    RUN_AGENTS,
    AgentUser,
    MakeUser,
    OpenAgents,
    cost_micros,
    final_run,
    submit,
)
from agent_tests.prometheus import Samples, sample, scrape
from apex_testkit import FakeLlm, completion_tokens, eventually, prompt_tokens

METRICS = pytest.mark.bvj(
    segment="platform", goal="Operators see runs, tokens and spend as they happen",
    mrr=7000, scenario="001#41",
)  # fmt: skip
pytestmark = [METRICS]

RUNS = 3
# The provider's scripted latency: every run takes longer than the 0.1 s bucket.
LATENCY = 0.15
MODEL = "gpt-4o-mini"


@pytest.fixture
async def runner(make_agent_user: MakeUser) -> AgentUser:
    return await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))


def _moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return sample(after, name, **labels) - sample(before, name, **labels)


async def _scrape_once_timed(
    client: httpx.AsyncClient, admin_token: str, before: Samples, runs: int
) -> Samples:
    """The first scrape in which ``runs`` more runs were timed than in ``before``."""

    async def timed() -> Samples | None:
        after = await scrape(client, admin_token)
        return after if _moved(before, after, "apex_agents_run_seconds_count") >= runs else None

    after = await eventually(timed, timeout=10, message=f"{runs} runs timed in /metrics")
    assert after is not None
    return after


@pytest.mark.L2
@pytest.mark.L3
async def test_counters_move_by_exactly_the_runs_tokens_and_cost_made(
    agents_with: OpenAgents, runner: AgentUser, fake_llm: FakeLlm, admin_token: str
) -> None:
    client = await agents_with(APEX_LLM_RETRIES="0")
    fake_llm.set_latency(LATENCY)
    answers = [f"Answer number {n}, a little longer each time{'!' * n}" for n in range(RUNS)]
    fake_llm.reply(*answers)
    before = await scrape(client, admin_token)
    runs = []
    for n in range(RUNS):  # one after another: the n-th call gets the n-th answer
        run = await final_run(client, runner, await submit(client, runner, input=f"Q{n}?"))
        runs.append(run)
    after = await _scrape_once_timed(client, admin_token, before, RUNS)

    assert [(r["status"], r["result"]) for r in runs] == [("succeeded", a) for a in answers]
    calls = fake_llm.calls
    assert len(calls) == RUNS
    prompts = [prompt_tokens(c.json["messages"]) for c in calls]
    completions = [completion_tokens(a) for a in answers]

    def moved(name: str, **labels: str) -> float:
        return _moved(before, after, name, **labels)

    assert moved("apex_agents_runs_total", outcome="submitted") == RUNS
    assert moved("apex_agents_runs_total", outcome="succeeded") == RUNS
    assert moved("apex_agents_runs_total", outcome="failed") == 0
    assert moved("apex_agents_llm_calls_total", provider="llm", result="ok") == RUNS
    assert moved("apex_agents_llm_calls_total", provider="llm", result="retried") == 0
    assert moved("apex_agents_llm_calls_total", provider="llm", result="failed") == 0
    assert moved("apex_agents_tokens_total", model=MODEL, kind="prompt") == sum(prompts)
    assert moved("apex_agents_tokens_total", model=MODEL, kind="completion") == sum(completions)
    # The default table's price (150 / 600 micros per 1,000 tokens), rounded up per call.
    prices = [cost_micros(p, c, 150, 600) for p, c in zip(prompts, completions, strict=True)]
    assert [r["cost_micros"] for r in runs] == prices
    assert moved("apex_agents_cost_micros_total", model=MODEL) == sum(prices)
    assert moved("apex_agents_run_seconds_count") == RUNS
    assert moved("apex_agents_run_seconds_sum") >= RUNS * LATENCY
    assert moved("apex_agents_run_seconds_bucket", le="0.1") == 0
    assert moved("apex_agents_run_seconds_bucket", le="+Inf") == RUNS


@pytest.mark.L2
@pytest.mark.L3
async def test_a_failed_run_counts_a_failure_and_no_tokens_nor_cost(
    agents_with: OpenAgents, runner: AgentUser, fake_llm: FakeLlm, admin_token: str
) -> None:
    client = await agents_with(APEX_LLM_RETRIES="0")
    fake_llm.fail_next(400)  # not retried: the request itself is wrong
    before = await scrape(client, admin_token)
    run = await final_run(client, runner, await submit(client, runner))
    after = await _scrape_once_timed(client, admin_token, before, 1)
    assert (run["status"], run["error"]) == ("failed", "provider_error")

    def moved(name: str, **labels: str) -> float:
        return _moved(before, after, name, **labels)

    assert moved("apex_agents_runs_total", outcome="submitted") == 1
    assert moved("apex_agents_runs_total", outcome="failed") == 1
    assert moved("apex_agents_runs_total", outcome="succeeded") == 0
    assert moved("apex_agents_llm_calls_total", provider="llm", result="failed") == 1
    assert moved("apex_agents_llm_calls_total", provider="llm", result="ok") == 0
    assert moved("apex_agents_tokens_total", model=MODEL, kind="prompt") == 0
    assert moved("apex_agents_tokens_total", model=MODEL, kind="completion") == 0
    assert moved("apex_agents_cost_micros_total", model=MODEL) == 0
    assert moved("apex_agents_run_seconds_count") == 1


@pytest.mark.L2
@pytest.mark.L3
async def test_metrics_answer_the_admin_token_only(
    agents_client: httpx.AsyncClient, runner: AgentUser
) -> None:
    anonymous = await agents_client.get("/metrics")
    assert anonymous.status_code == 401, anonymous.text
    as_user = await agents_client.get("/metrics", headers=runner.headers)
    assert as_user.status_code == 401, as_user.text
    assert "apex_agents" not in as_user.text


@pytest.mark.L2
async def test_garbage_collections_are_timed_by_generation(
    agents_client: httpx.AsyncClient, admin_token: str
) -> None:
    # L2 only: the app runs in this process, so this test's collection is the app's.
    before = await scrape(agents_client, admin_token)
    gc.collect()
    after = await scrape(agents_client, admin_token)
    assert _moved(before, after, "apex_agents_gc_pause_seconds_count", generation="2") >= 1
    assert _moved(before, after, "apex_agents_gc_pause_seconds_sum", generation="2") > 0
