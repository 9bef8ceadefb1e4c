"""Workflows: a declaration of steps as a graph, checked at submit, and its rules.

A workflow is ``{"steps": [{"id", "agent", "input"?, "depends_on": [...], "when"?:
{"step", "equals"}}], "aggregate": "merge"|"first"|"vote"}``. A step's dependencies are
its ``depends_on`` plus its ``when.step`` (a condition is read from a finished step). At
submit :func:`check` refuses a duplicate step id, an unknown agent, an unknown step and a
cycle (naming the steps of one cycle), so a stored workflow always has an order.
Everything here is a pure function: :mod:`apex.agents.supervisor` runs the graph.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final

__all__ = [
    "AGGREGATES",
    "Aggregate",
    "Step",
    "Workflow",
    "WorkflowError",
    "aggregate",
    "check",
    "find_cycle",
    "holds",
    "step_input",
]

AGGREGATES: Final = ("merge", "first", "vote")


class WorkflowError(Exception):
    """A workflow refused at submit: ``code`` is the contract's error (422)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class Step:
    """One step: which agent runs, with what input, after which steps, on what condition."""

    id: str
    agent: str
    input: str | None = None
    depends_on: tuple[str, ...] = ()
    when: tuple[str, Any] | None = None  # (step id, the value its output must equal)

    @property
    def needs(self) -> tuple[str, ...]:
        """Every step this one waits for: ``depends_on``, then ``when.step``."""
        if self.when is None or self.when[0] in self.depends_on:
            return self.depends_on
        return (*self.depends_on, self.when[0])


@dataclasses.dataclass(frozen=True)
class Workflow:
    """The steps in declared order and the aggregation rule."""

    steps: tuple[Step, ...]
    aggregate: str

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Workflow:
        """The workflow from its JSON form (as validated by the route, or as stored)."""
        steps = []
        for raw in data["steps"]:
            when = raw.get("when")
            steps.append(
                Step(
                    id=raw["id"],
                    agent=raw["agent"],
                    input=raw.get("input"),
                    depends_on=tuple(raw.get("depends_on", ())),
                    when=None if when is None else (when["step"], when["equals"]),
                )
            )
        return cls(tuple(steps), data.get("aggregate", "merge"))

    def to_json(self) -> dict[str, Any]:
        steps: list[dict[str, Any]] = []
        for step in self.steps:
            raw: dict[str, Any] = {"id": step.id, "agent": step.agent}
            if step.input is not None:
                raw["input"] = step.input
            raw["depends_on"] = list(step.depends_on)
            if step.when is not None:
                raw["when"] = {"step": step.when[0], "equals": step.when[1]}
            steps.append(raw)
        return {"steps": steps, "aggregate": self.aggregate}

    def finals(self) -> tuple[Step, ...]:
        """The steps no other step waits for (what the run's result aggregates)."""
        needed = {dep for step in self.steps for dep in step.needs}
        return tuple(step for step in self.steps if step.id not in needed)


def check(workflow: Workflow, agents: Collection[str]) -> None:
    """Raise :class:`WorkflowError` unless the workflow can run: ids unique, every agent
    known, every referenced step declared, no cycle, a known aggregation rule."""
    if not workflow.steps:
        raise WorkflowError("invalid_workflow", "a workflow needs at least one step")
    if workflow.aggregate not in AGGREGATES:
        raise WorkflowError("invalid_workflow", f"aggregate must be one of {AGGREGATES}")
    seen: set[str] = set()
    for step in workflow.steps:
        if step.id in seen:
            raise WorkflowError("duplicate_step", f"step {step.id!r} is declared twice")
        seen.add(step.id)
    for step in workflow.steps:
        if step.agent not in agents:
            known = ", ".join(sorted(agents))
            raise WorkflowError(
                "unknown_agent", f"step {step.id!r}: no agent {step.agent!r}; known: {known}"
            )
        for dep in step.needs:
            if dep not in seen:
                raise WorkflowError("unknown_step", f"step {step.id!r} names no step {dep!r}")
    cycle = find_cycle(workflow.steps)
    if cycle is not None:
        raise WorkflowError("cycle", "the steps form a cycle: " + " -> ".join(cycle))


def find_cycle(steps: Sequence[Step]) -> list[str] | None:
    """One cycle as the path of its steps (the first repeated at the end), or None.

    Depth-first over the steps in declared order; every dependency must be declared."""
    needs = {step.id: step.needs for step in steps}
    done: set[str] = set()
    for start in needs:
        if start in done:
            continue
        path: list[str] = [start]
        on_path = {start}
        stack = [iter(needs[start])]
        while stack:
            dep = next(stack[-1], None)
            if dep is None:
                stack.pop()
                finished = path.pop()
                done.add(finished)
                on_path.discard(finished)
                continue
            if dep in on_path:
                return [*path[path.index(dep) :], dep]
            if dep in done:
                continue
            path.append(dep)
            on_path.add(dep)
            stack.append(iter(needs[dep]))
    return None


def holds(when: tuple[str, Any], output: str) -> bool:
    """Whether a step's condition holds on its condition step's output: the output as
    JSON if it parses, else as whitespace-trimmed text, equals ``equals``."""
    try:
        value: Any = json.loads(output)
    except ValueError:
        value = output.strip()
    return bool(value == when[1])


def step_input(step: Step, run_input: str, outputs: Mapping[str, str]) -> str:
    """What the supervisor passes a step's agent: its own input (the run's when it has
    none), then each dependency's output under ``[output of step <id>]``, in order."""
    parts = [step.input if step.input is not None else run_input]
    parts.extend(f"[output of step {dep}]\n{outputs[dep]}" for dep in step.needs if dep in outputs)
    return "\n\n".join(parts)


@dataclasses.dataclass(frozen=True)
class Aggregate:
    """A workflow's result: its text (None when no final step ran) and conflicting keys."""

    result: str | None
    conflicts: tuple[str, ...] = ()


def aggregate(rule: str, outputs: Sequence[tuple[str, str]]) -> Aggregate:
    """Combine the final steps' ``(step id, output)`` in declared order by ``rule``.

    - ``first``: the first step's output.
    - ``vote``: the answer (whitespace-trimmed) most steps gave; a tie goes to the answer
      of the earliest step among the tied.
    - ``merge``: each output a JSON object, merged in order; a key two steps set to
      different values takes the later step's value and is listed in ``conflicts``.
      A non-object output is :class:`WorkflowError` ``merge_not_object``.
    """
    if not outputs:
        return Aggregate(None)
    if rule == "first":
        return Aggregate(outputs[0][1])
    if rule == "vote":
        counts: dict[str, int] = {}
        for _, output in outputs:
            answer = output.strip()
            counts[answer] = counts.get(answer, 0) + 1
        # dicts keep first-insertion order, and max() keeps the first of equal counts.
        return Aggregate(max(counts, key=lambda answer: counts[answer]))
    merged: dict[str, Any] = {}
    conflicts: list[str] = []
    for step_id, output in outputs:
        try:
            value = json.loads(output)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise WorkflowError("merge_not_object", f"step {step_id!r} did not answer an object")
        for key, item in value.items():
            if key in merged and merged[key] != item and key not in conflicts:
                conflicts.append(key)
            merged[key] = item
    return Aggregate(json.dumps(merged), tuple(conflicts))
