"""001#43 configuration hot reload by SIGHUP (L3: the service is a process to signal):
`python -m apex.agents` reads APEX_AGENTS_CONFIG again on SIGHUP, as the reload route
does (test_config_reload.py). Runs a worker starts after it use the new config (a new
model price: their cost), a run in flight keeps the config it started with; an invalid
file is refused (logged), the old config stays and the process keeps serving. Each
process reloads on its own signal: an API process that takes no jobs and a process whose
workers take them are signalled one after the other.

A signal is handled when the process's loop next runs: the tests wait for the line the
process logs for it (notes-agents.md § Reload) before they submit the run that proves it.
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_tests.client import (
    READ_RUNS,
    RUN_AGENTS,
    AgentUser,
    Held,
    MakeUser,
    OpenAgents,
    final_run,
    submit,
    until,
)
from agent_tests.test_config_reload import NEW, OLD, config_file, priced
from apex_testkit import FakeLlm, Platform, RedisNamespace, ServiceProcess

pytestmark = [
    pytest.mark.bvj(
        segment="enterprise", goal="Prices and rules change with no restart and no dropped run",
        mrr=6000, scenario="001#43",
    ),
    pytest.mark.L3,
]  # fmt: skip


@pytest.fixture
async def runner(make_agent_user: MakeUser) -> AgentUser:
    return await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))


@pytest.fixture
def own_queue(redis_namespace: RedisNamespace) -> dict[str, str]:
    """A job queue of the test's own (no process of earlier tests takes its jobs), and the
    INFO records in the log (the kit's L3 default is WARNING), where a reload is logged."""
    prefix = f"{redis_namespace.prefix}sighup-{uuid.uuid4().hex[:8]}:"
    return {"APEX_REDIS_PREFIX": prefix, "APEX_LOG_LEVEL": "INFO"}


def log_lines(process: ServiceProcess, text: str) -> int:
    """How many lines of the process's log contain `text`."""
    log = process.log.read_text(encoding="utf-8", errors="replace")
    return sum(text in line for line in log.splitlines())


async def hang_up(process: ServiceProcess, logged: str) -> None:
    """SIGHUP to the process, then wait until its log has one more line with `logged`."""
    before = log_lines(process, logged)
    process.send_signal(signal.SIGHUP)
    await until(
        lambda: log_lines(process, logged) > before,
        message=f"{process.name} logged {logged!r} after SIGHUP",
    )


async def priced_run(client: httpx.AsyncClient, runner: AgentUser, text: str) -> dict[str, Any]:
    """A new run of `text` (each test's texts distinct: no answer from the response cache,
    which costs nothing whatever the prices), finished and succeeded, its tokens counted."""
    run = await final_run(client, runner, await submit(client, runner, input=text))
    assert (run["status"], run["cached"]) == ("succeeded", False), run
    assert run["usage"]["prompt_tokens"] > 0  # so the old and the new price differ
    return run


async def test_runs_after_a_sighup_pay_the_new_price_runs_in_flight_the_old(
    clean_platform: Platform,
    agents_with: OpenAgents,
    runner: AgentUser,
    fake_llm: FakeLlm,
    own_queue: dict[str, str],
    tmp_path: Path,
) -> None:
    path = tmp_path / "agents.json"
    config_file(path, OLD)
    settings = {"APEX_AGENTS_CONFIG": str(path), **own_queue}
    client = await agents_with(**settings)
    process = clean_platform.instance("agents", 0, **settings)  # the client's process
    chain = {
        "steps": [
            {"id": "a", "agent": "assistant", "input": "hold me"},
            {"id": "b", "agent": "assistant", "depends_on": ["a"]},
        ],
        "aggregate": "first",
    }
    held = Held("hold me", times=1)
    fake_llm.respond_with(held)
    try:
        in_flight = await submit(client, runner, agent=None, workflow=chain)
        await until(lambda: held.held == 1, message="step a's call is held")
        config_file(path, NEW)
        await hang_up(process, "config reloaded: version 2")
        after = await priced_run(client, runner, "after the SIGHUP")
        assert after["cost_micros"] == priced(after, NEW)
    finally:
        held.release()
    run = await final_run(client, runner, in_flight)
    assert run["status"] == "succeeded"
    # Step b started after the SIGHUP, in a run that started before it: the old price.
    assert [s["cost_micros"] for s in run["steps"]] == [priced(s, OLD) for s in run["steps"]]
    assert run["cost_micros"] == sum(priced(s, OLD) for s in run["steps"])


async def test_an_invalid_file_and_a_sighup_leave_the_old_config_and_the_process_serving(
    clean_platform: Platform,
    agents_with: OpenAgents,
    runner: AgentUser,
    own_queue: dict[str, str],
    tmp_path: Path,
) -> None:
    path = tmp_path / "agents.json"
    config_file(path, OLD)
    settings = {"APEX_AGENTS_CONFIG": str(path), **own_queue}
    client = await agents_with(**settings)
    process = clean_platform.instance("agents", 0, **settings)
    pid = process.pid
    path.write_text('{"models": {}, "extra": 1}', encoding="utf-8")
    await hang_up(process, "config reload refused, the old config stays")
    assert log_lines(process, "'extra'") >= 1  # the refusal names the bad key
    assert (process.pid, (await client.get("/healthz")).status_code) == (pid, 200)
    run = await priced_run(client, runner, "after the refused file")
    assert run["cost_micros"] == priced(run, OLD)
    # The refused file was no version: the next valid one is version 2.
    config_file(path, NEW)
    await hang_up(process, "config reloaded: version 2")
    run = await priced_run(client, runner, "after the valid file")
    assert run["cost_micros"] == priced(run, NEW)


async def test_the_api_process_and_the_workers_process_each_reload_on_their_own_sighup(
    clean_platform: Platform,
    agents_with: OpenAgents,
    runner: AgentUser,
    own_queue: dict[str, str],
    tmp_path: Path,
) -> None:
    path = tmp_path / "agents.json"
    config_file(path, OLD)
    api_settings = {"APEX_AGENTS_CONFIG": str(path), "APEX_AGENTS_WORKERS": "0", **own_queue}
    client = await agents_with(**api_settings)  # takes no jobs itself
    api = clean_platform.instance("agents", 0, **api_settings)
    workers = clean_platform.instance(
        "agents", 1, APEX_AGENTS_CONFIG=str(path), APEX_AGENTS_WORKERS="1", **own_queue
    )
    config_file(path, NEW)
    await hang_up(api, "config reloaded: version 2")
    # The run is priced by the config of the process whose worker runs it: still the old.
    run = await priced_run(client, runner, "after the API's SIGHUP")
    assert run["cost_micros"] == priced(run, OLD)
    await hang_up(workers, "config reloaded: version 2")
    run = await priced_run(client, runner, "after the workers' SIGHUP")
    assert run["cost_micros"] == priced(run, NEW)
