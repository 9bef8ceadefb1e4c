"""001#43 configuration hot reload: `POST /admin/config/reload` (also SIGHUP) reads
APEX_AGENTS_CONFIG again; runs that start after it use the new config (a new model price:
their cost), runs in flight keep the config they started with (a workflow whose second
step starts after the reload is still priced at the old price); an invalid file is 422
and the old config stays. 003 config hot reload (L3): runs before, during and after a
reload all finish, none dropped. SIGHUP (L3): test_config_sighup.py.
"""

from __future__ import annotations

import json
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
    admin_headers,
    cost_micros,
    error_of,
    final_run,
    submit,
    until,
)
from apex_testkit import FakeLlm

RELOAD = pytest.mark.bvj(
    segment="enterprise", goal="Prices and rules change with no restart and no dropped run",
    mrr=6000, scenario="001#43",
)  # fmt: skip
NO_DROP = pytest.mark.bvj(
    segment="enterprise", goal="A config reload under load drops no customer's run",
    mrr=6000, scenario="003:config hot reload",
)  # fmt: skip

OLD = (1_000, 2_000)  # gpt-4o-mini's input/output micros per 1,000 tokens, then
NEW = (7_000, 9_000)


def config_file(path: Path, price: tuple[int, int], **more: Any) -> None:
    table = {
        "gpt-4o-mini": {
            "context_window": 128_000,
            "input_micros_per_1k": price[0],
            "output_micros_per_1k": price[1],
        }
    }
    path.write_text(json.dumps({"models": table, **more}), encoding="utf-8")


def priced(step: dict[str, Any], price: tuple[int, int]) -> int:
    usage = step["usage"]
    return cost_micros(usage["prompt_tokens"], usage["completion_tokens"], *price)


@pytest.fixture
async def runner(make_agent_user: MakeUser) -> AgentUser:
    return await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))


async def reload(client: httpx.AsyncClient, admin_token: str) -> httpx.Response:
    return await client.post("/admin/config/reload", headers=admin_headers(admin_token))


@RELOAD
@pytest.mark.L2
@pytest.mark.L3
async def test_runs_after_a_reload_pay_the_new_price_runs_in_flight_the_old(
    agents_with: OpenAgents,
    runner: AgentUser,
    fake_llm: FakeLlm,
    admin_token: str,
    tmp_path: Path,
) -> None:
    path = tmp_path / "agents.json"
    config_file(path, OLD)
    client = await agents_with(APEX_AGENTS_CONFIG=str(path))
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
        reloaded = await reload(client, admin_token)
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["version"] == 2
        assert reloaded.json()["models"]["gpt-4o-mini"]["input_micros_per_1k"] == NEW[0]
        after = await final_run(client, runner, await submit(client, runner))
        assert after["status"] == "succeeded"
        assert after["cost_micros"] == priced(after, NEW) > priced(after, OLD)
    finally:
        held.release()
    run = await final_run(client, runner, in_flight)
    assert run["status"] == "succeeded"
    # Step b started after the reload, in a run that started before it: the old price.
    assert [s["cost_micros"] for s in run["steps"]] == [priced(s, OLD) for s in run["steps"]]
    assert run["cost_micros"] == sum(priced(s, OLD) for s in run["steps"])


@RELOAD
@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("{not json", "not valid JSON"),
        ('{"models": {}, "extra": 1}', "'extra'"),
        ('{"models": {"gpt-4o-mini": {"context_window": 1}}}', "gpt-4o-mini"),
        ('{"quality": {"min_length": -1}}', "min_length"),
        ('{"providers": ["llm", "llm"]}', "providers"),
    ],
    ids=["json", "unknown-key", "model-fields", "quality-rule", "providers"],
)
async def test_an_invalid_file_is_refused_and_the_old_config_stays(
    agents_with: OpenAgents,
    runner: AgentUser,
    admin_token: str,
    tmp_path: Path,
    content: str,
    named: str,
) -> None:
    path = tmp_path / "agents.json"
    config_file(path, OLD)
    client = await agents_with(APEX_AGENTS_CONFIG=str(path))
    path.write_text(content, encoding="utf-8")
    refused = await reload(client, admin_token)
    assert refused.status_code == 422, refused.text
    assert error_of(refused) == "invalid_config"
    assert named in refused.json()["detail"]
    run = await final_run(client, runner, await submit(client, runner))
    assert run["cost_micros"] == priced(run, OLD)
    # The refused file was no version: the next valid one is version 2.
    config_file(path, NEW)
    accepted = await reload(client, admin_token)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["version"] == 2


@RELOAD
@pytest.mark.L2
@pytest.mark.L3
async def test_only_the_admin_reloads(
    agents_with: OpenAgents, runner: AgentUser, admin_token: str, tmp_path: Path
) -> None:
    path = tmp_path / "agents.json"
    config_file(path, OLD)
    client = await agents_with(APEX_AGENTS_CONFIG=str(path))
    config_file(path, NEW)
    for headers in ({}, runner.headers, admin_headers("not-the-admin-token")):
        refused = await client.post("/admin/config/reload", headers=headers)
        assert refused.status_code == 401, refused.text
    run = await final_run(client, runner, await submit(client, runner))
    assert run["cost_micros"] == priced(run, OLD)  # the new file was never read


@NO_DROP
@pytest.mark.L3
async def test_runs_around_a_reload_all_finish(
    agents_with: OpenAgents,
    runner: AgentUser,
    fake_llm: FakeLlm,
    admin_token: str,
    tmp_path: Path,
) -> None:
    path = tmp_path / "agents.json"
    config_file(path, OLD)
    client = await agents_with(APEX_AGENTS_CONFIG=str(path), APEX_AGENTS_WORKERS="4")
    held = Held("before", times=3)
    fake_llm.respond_with(held)
    try:
        before = [await submit(client, runner, input=f"before {n}") for n in range(3)]
        await until(lambda: held.held == 3, message="three runs in flight")
        config_file(path, NEW)
        assert (await reload(client, admin_token)).status_code == 200
        after = [await submit(client, runner, input=f"after {n}") for n in range(3)]
        for run_id in after:
            run = await final_run(client, runner, run_id)
            assert (run["status"], run["cost_micros"]) == ("succeeded", priced(run, NEW))
    finally:
        held.release()
    for run_id in before:
        run = await final_run(client, runner, run_id)
        assert (run["status"], run["cost_micros"]) == ("succeeded", priced(run, OLD))
    assert len(fake_llm.calls) == 6  # each run called once: none retried, none lost
