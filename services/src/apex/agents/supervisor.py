"""The supervisor: runs a workflow's steps (sub-agent calls) and aggregates their results.

Steps whose dependencies have succeeded start at once, each in a task of its own, so
independent steps' LLM calls are in flight together. A step whose ``when`` does not hold
is ``skipped``, and so is every step that waits for a skipped one (none of them calls the
LLM). A step's agent gets :func:`apex.agents.graph.step_input`: its input and its
dependencies' outputs. The first failing step fails the run: the steps still in flight
are cancelled, no other step starts. The step records are saved after every change, and a
redelivered run reuses the steps that succeeded before (no second LLM call for them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Final

from apex.agents.graph import Step, Workflow, WorkflowError, aggregate, holds, step_input
from apex.agents.llm import LlmError
from apex.agents.quality import QUALITY_FAILED, QualityRejected
from apex.agents.runs import Usage, WorkflowOutcome
from apex.agents.state import step_record

__all__ = ["CallAgent", "SaveSteps", "Supervisor"]

# One sub-agent call: (step id, agent name, its input) -> (its answer, its usage); LlmError
# if none.
CallAgent = Callable[[str, str, str], Coroutine[Any, Any, tuple[str, Usage]]]
# Save the step records of the running run.
SaveSteps = Callable[[list[dict[str, Any]]], Awaitable[object]]

_SETTLED: Final = frozenset({"succeeded", "skipped"})


class Supervisor:
    """Runs one workflow to an outcome with ``call`` for each step's agent."""

    def __init__(self, call: CallAgent, save: SaveSteps) -> None:
        self._call = call
        self._save = save

    async def run(
        self, workflow: Workflow, run_input: str, before: Sequence[dict[str, Any]] = ()
    ) -> WorkflowOutcome:
        """Run the steps not yet succeeded (``before``: the records saved so far)."""
        records = {step.id: _record(step) for step in workflow.steps}
        for prior in before:
            if prior.get("status") == "succeeded" and prior.get("id") in records:
                records[prior["id"]] = dict(prior)
        running: dict[asyncio.Task[tuple[str, Usage]], str] = {}
        failed: str | None = None
        try:
            while True:
                self._start_ready(workflow, run_input, records, running)
                await self._save(list(records.values()))
                if not running:
                    break
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    step_id = running.pop(task)
                    failed = _settle(records[step_id], task) or failed
                if failed is not None:
                    break
        finally:
            for task, step_id in running.items():
                task.cancel()
                records[step_id]["status"] = "cancelled"
            if running:
                await asyncio.wait(running)
        for record in records.values():
            if record["status"] == "pending":
                record["status"] = "not_run"
        return _outcome(workflow, list(records.values()), failed)

    def _start_ready(
        self,
        workflow: Workflow,
        run_input: str,
        records: dict[str, dict[str, Any]],
        running: dict[asyncio.Task[tuple[str, Usage]], str],
    ) -> None:
        """Start (or skip) every pending step whose dependencies are settled, until no
        more is (a skip can settle a step declared earlier)."""
        changed = True
        while changed:
            changed = False
            for step in workflow.steps:
                record = records[step.id]
                states = [records[dep]["status"] for dep in step.needs]
                if record["status"] != "pending" or not all(s in _SETTLED for s in states):
                    continue
                changed = True
                if "skipped" in states:
                    record.update(status="skipped", error="dependency_skipped")
                elif step.when is not None and not holds(
                    step.when, records[step.when[0]]["result"]
                ):
                    record.update(status="skipped", error="condition_false")
                else:
                    outputs = {
                        dep: records[dep]["result"] for dep in step.needs
                    }  # every one succeeded
                    text = step_input(step, run_input, outputs)
                    record["status"] = "running"
                    task = asyncio.create_task(self._call(step.id, step.agent, text))
                    running[task] = step.id


def _record(step: Step) -> dict[str, Any]:
    return step_record(step.id, step.agent)


def _settle(record: dict[str, Any], task: asyncio.Task[tuple[str, Usage]]) -> str | None:
    """Record a finished step's answer or error; its id when it failed."""
    try:
        content, usage = task.result()
    except QualityRejected as exc:
        # Its attempts' tokens are billed all the same (summed into the run's usage).
        record.update(status="failed", error=exc.reason, quality_reasons=exc.reasons)
        _spent(record, exc.usage)
        return str(record["id"])
    except LlmError as exc:
        record.update(status="failed", error=exc.reason)
        return str(record["id"])
    record.update(status="succeeded", result=content)
    _spent(record, usage)
    return None


# The fields of a step record that say what its calls used (``state.step_record``).
_USAGE_FIELDS: Final = ("usage", "cost_micros", "provider", "attempts", "tool_calls", "cached")


def _spent(record: dict[str, Any], usage: Usage) -> None:
    """Record what a step's calls used and cost, and whether the cache answered."""
    spent = step_record(record["id"], record["agent"], usage=usage)
    record.update({key: spent[key] for key in _USAGE_FIELDS})


def _outcome(
    workflow: Workflow, steps: list[dict[str, Any]], failed: str | None
) -> WorkflowOutcome:
    """The run's end: its steps' usage summed; the aggregate of its final steps that
    succeeded, or the failing step's error."""
    by_id = {record["id"]: record for record in steps}
    status, result, error = "succeeded", None, None
    conflicts: tuple[str, ...] = ()
    if failed is not None:
        status, error = "failed", "step_failed"
    else:
        outputs = [
            (step.id, by_id[step.id]["result"])
            for step in workflow.finals()
            if by_id[step.id]["status"] == "succeeded"
        ]
        try:
            combined = aggregate(workflow.aggregate, outputs)
            result, conflicts = combined.result, combined.conflicts
        except WorkflowError as exc:
            status, error = "failed", exc.code
    # A step the quality gate rejected spent tokens: they are billed with the others.
    ran = [r for r in steps if r["status"] == "succeeded" or r["error"] == QUALITY_FAILED]
    providers: list[str] = []
    for record in ran:
        if record["provider"] not in providers:
            providers.append(record["provider"])
    return WorkflowOutcome(
        status=status,
        result=result,
        error=error,
        steps=steps,
        conflicts=conflicts,
        prompt_tokens=sum(r["usage"]["prompt_tokens"] for r in ran),
        completion_tokens=sum(r["usage"]["completion_tokens"] for r in ran),
        cost_micros=sum(r["cost_micros"] for r in ran),
        provider_path=providers,
        attempts=sum(r["attempts"] for r in ran),
    )
