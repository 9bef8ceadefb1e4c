"""apex.agents' workflow graph (pure): the submit-time checks (unknown agent or step, a
cycle named by its steps), conditions, step inputs and the aggregation rules; and the
supervisor's order of steps with a scripted sub-agent call (no LLM, no database)."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest

from apex.agents.graph import (
    Step,
    Workflow,
    WorkflowError,
    aggregate,
    check,
    find_cycle,
    holds,
    step_input,
)
from apex.agents.llm import LlmError
from apex.agents.runs import Usage
from apex.agents.supervisor import Supervisor

AGENTS = ("assistant",)


def flow(*steps: dict[str, Any], rule: str = "merge") -> Workflow:
    return Workflow.of({"steps": [{"agent": "assistant", **s} for s in steps], "aggregate": rule})


def refusal(workflow: Workflow) -> WorkflowError:
    with pytest.raises(WorkflowError) as caught:
        check(workflow, AGENTS)
    return caught.value


def test_a_diamond_is_accepted_and_round_trips() -> None:
    workflow = flow(
        {"id": "a"},
        {"id": "b", "depends_on": ["a"]},
        {"id": "c", "depends_on": ["a"], "when": {"step": "a", "equals": "yes"}},
        {"id": "d", "depends_on": ["b", "c"], "input": "sum up"},
        rule="vote",
    )
    check(workflow, AGENTS)
    assert Workflow.of(workflow.to_json()) == workflow
    assert [s.id for s in workflow.finals()] == ["d"]


def test_an_unknown_agent_is_named() -> None:
    error = refusal(Workflow.of({"steps": [{"id": "a", "agent": "nobody"}]}))
    assert error.code == "unknown_agent"
    assert "'nobody'" in error.detail
    assert "'a'" in error.detail


@pytest.mark.parametrize(
    "step",
    [{"id": "b", "depends_on": ["ghost"]}, {"id": "b", "when": {"step": "ghost", "equals": 1}}],
)
def test_an_unknown_step_is_named(step: dict[str, Any]) -> None:
    error = refusal(flow({"id": "a"}, step))
    assert error.code == "unknown_step"
    assert "'ghost'" in error.detail


def test_a_duplicate_step_is_refused() -> None:
    assert refusal(flow({"id": "a"}, {"id": "a"})).code == "duplicate_step"


def test_a_cycle_is_named_by_its_steps_only() -> None:
    workflow = flow(
        {"id": "entry"},
        {"id": "x", "depends_on": ["entry", "z"]},
        {"id": "y", "depends_on": ["x"]},
        {"id": "z", "depends_on": ["y"]},
    )
    cycle = find_cycle(workflow.steps)
    assert cycle is not None
    assert cycle[0] == cycle[-1]
    assert sorted(cycle[:-1]) == ["x", "y", "z"]
    error = refusal(workflow)
    assert error.code == "cycle"
    assert "entry" not in error.detail
    assert all(s in error.detail for s in "xyz")


def test_a_self_dependency_and_a_condition_loop_are_cycles() -> None:
    assert find_cycle([Step("a", "assistant", depends_on=("a",))]) == ["a", "a"]
    looped = [Step("a", "assistant", when=("b", 1)), Step("b", "assistant", depends_on=("a",))]
    assert sorted(find_cycle(looped) or []) == ["a", "a", "b"]


def test_no_cycle_in_a_wide_acyclic_graph() -> None:
    steps = [
        Step(f"s{i}", "assistant", depends_on=tuple(f"s{j}" for j in range(i))) for i in range(30)
    ]
    assert find_cycle(steps) is None


def test_conditions_compare_json_or_trimmed_text() -> None:
    assert holds(("a", "yes"), "  yes\n")
    assert holds(("a", {"ok": True}), '{"ok": true}')
    assert holds(("a", 3), "3")
    assert not holds(("a", "yes"), "no")


def test_a_step_input_carries_its_dependencies_outputs() -> None:
    step = Step("c", "assistant", depends_on=("a", "b"))
    text = step_input(step, "the run's question", {"a": "A says", "b": "B says"})
    assert text == "the run's question\n\n[output of step a]\nA says\n\n[output of step b]\nB says"
    assert step_input(Step("d", "assistant", input="own"), "run", {}) == "own"


def test_merge_takes_the_later_step_and_lists_conflicts() -> None:
    combined = aggregate(
        "merge", [("a", '{"x": 1, "y": 2}'), ("b", '{"y": 3, "z": 4}'), ("c", '{"x": 1}')]
    )
    assert json.loads(combined.result or "") == {"x": 1, "y": 3, "z": 4}
    assert combined.conflicts == ("y",)


def test_merge_refuses_a_non_object() -> None:
    with pytest.raises(WorkflowError) as caught:
        aggregate("merge", [("a", "{}"), ("b", "plain text")])
    assert caught.value.code == "merge_not_object"
    assert "'b'" in caught.value.detail


def test_vote_takes_the_majority_and_ties_go_to_the_earliest_step() -> None:
    assert aggregate("vote", [("a", "no"), ("b", "yes "), ("c", "yes")]).result == "yes"
    assert aggregate("vote", [("a", "left"), ("b", "right")]).result == "left"
    assert aggregate("vote", [("a", "x"), ("b", "y"), ("c", "y"), ("d", "x")]).result == "x"


def test_first_and_nothing_to_aggregate() -> None:
    assert aggregate("first", [("a", "one"), ("b", "two")]).result == "one"
    assert aggregate("vote", []).result is None


class Script:
    """A sub-agent call answering per agent input, recording what each step was given."""

    def __init__(self, answers: dict[str, str], fail: str | None = None) -> None:
        self.answers = answers
        self.fail = fail
        self.inputs: list[str] = []

    async def __call__(self, step: str, agent: str, text: str) -> tuple[str, Usage]:
        self.inputs.append(text)
        first = text.split("\n", 1)[0]
        if first == self.fail:
            raise LlmError("provider_unavailable", "scripted", 3)
        return self.answers[first], Usage(10, 2, 5, "llm", 1)


async def _run(workflow: Workflow, script: Script) -> Any:
    saves: list[list[dict[str, Any]]] = []

    async def save(steps: list[dict[str, Any]]) -> None:
        saves.append(copy.deepcopy(steps))  # the supervisor goes on changing its records

    outcome = await Supervisor(script, save).run(workflow, "question")
    return outcome, saves


async def test_the_supervisor_skips_a_false_branch_and_its_dependants() -> None:
    workflow = flow(
        {"id": "route", "input": "route"},
        {"id": "yes", "input": "yes", "when": {"step": "route", "equals": "yes"}},
        {"id": "no", "input": "no", "when": {"step": "route", "equals": "no"}},
        {"id": "after_no", "input": "after_no", "depends_on": ["no"]},
        rule="first",
    )
    script = Script({"route": "yes", "yes": "took yes"})
    outcome, saves = await _run(workflow, script)
    assert outcome.status == "succeeded"
    assert outcome.result == "took yes"
    assert [s["status"] for s in outcome.steps] == ["succeeded", "succeeded", "skipped", "skipped"]
    assert script.inputs == ["route", "yes\n\n[output of step route]\nyes"]
    assert (outcome.prompt_tokens, outcome.completion_tokens, outcome.cost_micros) == (20, 4, 10)
    assert saves[-1] == outcome.steps
    assert [s["status"] for s in saves[0]] == ["running", "pending", "pending", "pending"]


async def test_the_supervisor_fails_on_a_step_and_runs_no_dependant() -> None:
    workflow = flow(
        {"id": "a", "input": "a"},
        {"id": "b", "input": "b", "depends_on": ["a"]},
        {"id": "c", "input": "c", "depends_on": ["b"]},
    )
    script = Script({"a": "{}"}, fail="b")
    outcome, _ = await _run(workflow, script)
    assert (outcome.status, outcome.error) == ("failed", "step_failed")
    assert [s["status"] for s in outcome.steps] == ["succeeded", "failed", "not_run"]
    assert outcome.steps[1]["error"] == "provider_unavailable"
    assert len(script.inputs) == 2


async def test_the_supervisor_runs_independent_steps_at_once() -> None:
    both = asyncio.Barrier(2)

    async def call(step: str, agent: str, text: str) -> tuple[str, Usage]:
        await asyncio.wait_for(both.wait(), 10)  # only passes with both calls in flight
        return f'{{"k": "{text[0]}"}}', Usage(1, 1, 1, "llm", 1)

    workflow = flow({"id": "a", "input": "a"}, {"id": "b", "input": "b"})

    async def save(steps: list[dict[str, Any]]) -> None:
        return None

    outcome = await Supervisor(call, save).run(workflow, "q")
    assert outcome.status == "succeeded"
    assert json.loads(outcome.result or "") == {"k": "b"}
    assert outcome.conflicts == ("k",)


async def test_a_redelivered_run_reuses_the_steps_that_succeeded() -> None:
    workflow = flow(
        {"id": "a", "input": "a"}, {"id": "b", "input": "b", "depends_on": ["a"]}, rule="first"
    )
    script = Script({"a": "A", "b": "B"})
    first, _ = await _run(workflow, script)
    again = Script({"b": "B2"})
    saves: list[list[dict[str, Any]]] = []

    async def save(steps: list[dict[str, Any]]) -> None:
        saves.append(copy.deepcopy(steps))  # the supervisor goes on changing its records

    before = [first.steps[0], {**first.steps[1], "status": "running"}]
    outcome = await Supervisor(again, save).run(workflow, "question", before)
    assert again.inputs == ["b\n\n[output of step a]\nA"]  # no second call for a
    assert (outcome.status, outcome.result) == ("succeeded", "B2")
    assert outcome.prompt_tokens == 20
