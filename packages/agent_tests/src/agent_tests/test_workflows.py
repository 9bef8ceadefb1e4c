"""Workflows: a supervisor runs sub-agents as a graph of steps (001#31, 001#33, 001#35,
001#38, 001#44).

The rules under test (contract-agents.md § Definitions (Workflow), notes-agents.md §
Workflows): `POST /v1/runs {workflow: {steps, aggregate}, input, idempotency_key}`; at
submit an unknown agent or step is 422 naming it and a cycle is 422 `cycle` naming the
steps of one cycle, with nothing stored or queued. Steps whose dependencies are done run
in parallel; a `when` that is false skips the step and its dependants (no LLM call); a
step's agent gets its input then each dependency's output under `[output of step <id>]`;
the result aggregates the final steps (those no step depends on) that ran: `merge` takes
the later-declared step on a conflicting key and lists it in `conflicts`, `vote` the
majority (ties to the earliest step), `first` the first. A failing step fails the run
(`step_failed`, `failed_step` its id) and no dependant runs. `steps` carry each step's
status, usage and cost; the run's usage and cost are their sums.

Each sub-agent's answer comes from a responder keyed on the first line of the step's
input, so the fake's request log says which step each call was.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest

from agent_tests.client import (
    READ_RUNS,
    RUN_AGENTS,
    AgentUser,
    MakeUser,
    cost_micros,
    error_of,
    final_run,
    run_body,
    submit,
)
from apex_testkit import FakeLlm, LlmRequest, completion_tokens, prompt_tokens

SUPERVISOR = pytest.mark.bvj(
    segment="enterprise", goal="A supervisor hands each sub-agent what the steps before it found",
    mrr=12000, scenario="001#31",
)  # fmt: skip
WORKFLOWS = pytest.mark.bvj(
    segment="enterprise", goal="Multi-agent workflows run in order, in parallel and on conditions",
    mrr=12000, scenario="001#33",
)  # fmt: skip
ERRORS = pytest.mark.bvj(
    segment="enterprise", goal="A failing sub-agent fails its run visibly; nothing after it runs",
    mrr=8000, scenario="001#35",
)  # fmt: skip
AGGREGATION = pytest.mark.bvj(
    segment="enterprise", goal="Sub-agents' answers combine by a documented rule, conflicts shown",
    mrr=8000, scenario="001#38",
)  # fmt: skip
DEPENDENCIES = pytest.mark.bvj(
    segment="enterprise", goal="A workflow that cannot run is refused before it costs anything",
    mrr=8000, scenario="001#44",
)  # fmt: skip

# How long a parallel step's answer waits for its sibling's request to arrive.
BARRIER_SECONDS = 20.0


@pytest.fixture
async def runner(make_agent_user: MakeUser) -> AgentUser:
    return await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))


def step(step_id: str, *, depends_on: tuple[str, ...] = (), **fields: Any) -> dict[str, Any]:
    """A step of the built-in agent whose input is `task <id>`."""
    return {
        "id": step_id,
        "agent": "assistant",
        "input": f"task {step_id}",
        "depends_on": list(depends_on),
        **fields,
    }


def workflow(*steps: dict[str, Any], aggregate: str = "first") -> dict[str, Any]:
    return {"steps": list(steps), "aggregate": aggregate}


async def submit_workflow(client: httpx.AsyncClient, user: AgentUser, flow: dict[str, Any]) -> str:
    return await submit(client, user, agent=None, workflow=flow)


def task_of(request: LlmRequest) -> str:
    """The step a chat request is for: the first line of its user message."""
    return request.last_user_text.split("\n", 1)[0]


def chat_calls(fake_llm: FakeLlm) -> list[LlmRequest]:
    return [c for c in fake_llm.calls if c.path.endswith("/chat/completions")]


def answer_by_task(answers: dict[str, str]) -> Any:
    """A responder answering each step's call with `answers[<its task line>]`."""

    def respond(request: LlmRequest) -> str:
        return answers[task_of(request)]

    return respond


@SUPERVISOR
@WORKFLOWS
@pytest.mark.L2
@pytest.mark.L3
async def test_parallel_steps_are_in_flight_together_and_the_next_sees_their_outputs(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm
) -> None:
    # a and b answer only once both requests are at the provider: run one after the
    # other, the barrier breaks and the run fails.
    both = threading.Barrier(2, timeout=BARRIER_SECONDS)
    answers = {"task a": "Alpha found 3.", "task b": "Beta found 4.", "task c": "Total 7."}

    def respond(request: LlmRequest) -> str:
        task = task_of(request)
        if task in ("task a", "task b"):
            both.wait()
        return answers[task]

    fake_llm.respond_with(respond)
    flow = workflow(step("a"), step("b"), step("c", depends_on=("a", "b")))
    run_id = await submit_workflow(agents_client, runner, flow)
    run = await final_run(agents_client, runner, run_id)

    assert run["status"] == "succeeded", run
    assert run["result"] == "Total 7."
    calls = chat_calls(fake_llm)
    assert sorted(task_of(c) for c in calls[:2]) == ["task a", "task b"]
    assert [task_of(c) for c in calls[2:]] == ["task c"]
    # The supervisor passed c its own task and what a and b found, in declared order.
    assert calls[2].last_user_text == (
        "task c\n\n[output of step a]\nAlpha found 3.\n\n[output of step b]\nBeta found 4."
    )
    by_task = {task_of(c): c for c in calls}
    steps = {s["id"]: s for s in run["steps"]}
    assert [s["id"] for s in run["steps"]] == ["a", "b", "c"]
    for step_id in "abc":
        reported = {
            "prompt_tokens": prompt_tokens(by_task[f"task {step_id}"].json["messages"]),
            "completion_tokens": completion_tokens(answers[f"task {step_id}"]),
        }
        assert steps[step_id]["status"] == "succeeded"
        assert steps[step_id]["usage"] == reported
        price = cost_micros(reported["prompt_tokens"], reported["completion_tokens"], 150, 600)
        assert steps[step_id]["cost_micros"] == price
    assert run["usage"] == {
        kind: sum(s["usage"][kind] for s in run["steps"])
        for kind in ("prompt_tokens", "completion_tokens")
    }
    assert run["cost_micros"] == sum(s["cost_micros"] for s in run["steps"])
    assert (run["conflicts"], run["failed_step"]) == ([], None)


@WORKFLOWS
@pytest.mark.L2
@pytest.mark.L3
async def test_a_false_condition_skips_the_step_and_its_dependants(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm
) -> None:
    fake_llm.respond_with(
        answer_by_task({"task route": " no ", "task fallback": "Handled by the fallback."})
    )
    flow = workflow(
        step("route"),
        step("deep", depends_on=("route",), when={"step": "route", "equals": "yes"}),
        step("after", depends_on=("deep",)),
        step("fallback", when={"step": "route", "equals": "no"}),
    )
    run = await final_run(agents_client, runner, await submit_workflow(agents_client, runner, flow))

    assert run["status"] == "succeeded", run
    assert run["result"] == "Handled by the fallback."
    assert [task_of(c) for c in chat_calls(fake_llm)] == ["task route", "task fallback"]
    status = {s["id"]: s["status"] for s in run["steps"]}
    assert status == {
        "route": "succeeded",
        "deep": "skipped",
        "after": "skipped",
        "fallback": "succeeded",
    }
    skipped = [s for s in run["steps"] if s["status"] == "skipped"]
    assert all(s["usage"] == {"prompt_tokens": 0, "completion_tokens": 0} for s in skipped)
    assert all(s["cost_micros"] == 0 for s in skipped)


@ERRORS
@pytest.mark.L2
@pytest.mark.L3
async def test_a_failing_step_fails_the_run_and_no_dependant_runs(
    agents_client: httpx.AsyncClient,
    runner: AgentUser,
    fake_llm: FakeLlm,
    fake_llm_fallback: FakeLlm,
) -> None:
    def respond(request: LlmRequest) -> str:
        if task_of(request) == "task b":
            raise RuntimeError("the sub-agent's provider broke")  # the fake answers 500
        return "fine"

    fake_llm.respond_with(respond)
    fake_llm_fallback.respond_with(respond)  # both providers fail step b
    flow = workflow(step("a"), step("b", depends_on=("a",)), step("c", depends_on=("b",)))
    run = await final_run(agents_client, runner, await submit_workflow(agents_client, runner, flow))

    assert (run["status"], run["error"], run["failed_step"]) == ("failed", "step_failed", "b")
    status = {s["id"]: (s["status"], s["error"]) for s in run["steps"]}
    assert status == {
        "a": ("succeeded", None),
        "b": ("failed", "providers_unavailable"),
        "c": ("not_run", None),
    }
    tasks = [task_of(c) for c in chat_calls(fake_llm)]
    assert tasks[0] == "task a"
    assert set(tasks[1:]) == {"task b"}  # b's retries; c never called
    # Only what was answered is billed: a's call.
    assert run["usage"] == run["steps"][0]["usage"]
    assert run["cost_micros"] == run["steps"][0]["cost_micros"] > 0


@AGGREGATION
@pytest.mark.L2
async def test_merge_takes_the_later_step_on_a_conflict_and_lists_the_key(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm
) -> None:
    fake_llm.respond_with(
        answer_by_task({
            "task early": json.dumps({"city": "Paris", "country": "France"}),
            "task late": json.dumps({"city": "Lyon", "country": "France", "rank": 2}),
        })
    )  # fmt: skip
    flow = workflow(step("early"), step("late"), aggregate="merge")
    run = await final_run(agents_client, runner, await submit_workflow(agents_client, runner, flow))

    assert run["status"] == "succeeded", run
    assert json.loads(run["result"]) == {"city": "Lyon", "country": "France", "rank": 2}
    assert run["conflicts"] == ["city"]


@AGGREGATION
@pytest.mark.L2
@pytest.mark.parametrize(
    ("votes", "winner"),
    [(("no", "yes", "yes"), "yes"), (("left", "right"), "left"), (("x", "y", "y", "x"), "x")],
    ids=["majority", "tie-two", "tie-four"],
)
async def test_vote_takes_the_majority_and_a_tie_goes_to_the_earliest_step(
    agents_client: httpx.AsyncClient,
    runner: AgentUser,
    fake_llm: FakeLlm,
    votes: tuple[str, ...],
    winner: str,
) -> None:
    ids = [f"v{i}" for i in range(len(votes))]
    fake_llm.respond_with(answer_by_task({f"task {i}": v for i, v in zip(ids, votes, strict=True)}))
    flow = workflow(*(step(i) for i in ids), aggregate="vote")
    run = await final_run(agents_client, runner, await submit_workflow(agents_client, runner, flow))

    assert run["status"] == "succeeded", run
    assert run["result"] == winner
    assert len(chat_calls(fake_llm)) == len(votes)


async def _nothing_happened(agents_db: Any, fake_llm: FakeLlm) -> None:
    assert await agents_db.fetchval("SELECT count(*) FROM agent_runs") == 0
    assert fake_llm.calls == []


@DEPENDENCIES
@pytest.mark.L2
@pytest.mark.parametrize(
    ("flow", "error", "named", "not_named"),
    [
        (workflow(step("a"), {**step("b"), "agent": "ghost-agent"}), "unknown_agent",
         ("ghost-agent",), ()),
        (workflow(step("a", depends_on=("missing",))), "unknown_step", ("missing",), ()),
        (workflow(step("a"), step("b", when={"step": "nowhere", "equals": 1})), "unknown_step",
         ("nowhere",), ()),
        (workflow(step("entry"), step("x", depends_on=("entry", "z")),
                  step("y", depends_on=("x",)), step("z", depends_on=("y",))), "cycle",
         ("x", "y", "z"), ("entry",)),
        (workflow(step("self", depends_on=("self",))), "cycle", ("self",), ()),
    ],
    ids=["unknown-agent", "unknown-dependency", "unknown-condition-step", "cycle", "self-cycle"],
)  # fmt: skip
async def test_a_workflow_that_cannot_run_is_422_naming_the_fault_and_runs_nothing(
    agents_client: httpx.AsyncClient,
    runner: AgentUser,
    fake_llm: FakeLlm,
    agents_db: Any,
    flow: dict[str, Any],
    error: str,
    named: tuple[str, ...],
    not_named: tuple[str, ...],
) -> None:
    response = await agents_client.post(
        "/v1/runs", json=run_body(agent=None, workflow=flow), headers=runner.headers
    )
    assert response.status_code == 422, response.text
    assert error_of(response) == error
    detail = response.json()["detail"]
    assert all(f"'{name}'" in detail or name in detail.split() for name in named), detail
    assert not any(name in detail for name in not_named), detail
    await _nothing_happened(agents_db, fake_llm)


@DEPENDENCIES
@pytest.mark.L2
@pytest.mark.parametrize(
    ("fields", "error"),
    [({}, "invalid_request"),
     ({"agent": "assistant", "workflow": workflow(step("a"))}, "invalid_request"),
     ({"workflow": {"steps": []}}, "invalid_workflow"),
     ({"workflow": {"steps": [step("a")], "aggregate": "sum"}}, "invalid_workflow")],
    ids=["neither", "both", "no-steps", "unknown-rule"],
)  # fmt: skip
async def test_a_run_names_one_agent_or_one_valid_workflow(
    agents_client: httpx.AsyncClient,
    runner: AgentUser,
    fake_llm: FakeLlm,
    agents_db: Any,
    fields: dict[str, Any],
    error: str,
) -> None:
    body = run_body(**{"agent": None, **fields})
    response = await agents_client.post("/v1/runs", json=body, headers=runner.headers)
    assert response.status_code == 422, response.text
    assert error_of(response) == error  # notes-agents.md § Choices: Workflows
    await _nothing_happened(agents_db, fake_llm)
