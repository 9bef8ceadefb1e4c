"""One agent call: what a run's step does, from its agent's name to an answer and its cost.

:class:`AgentCaller` is the one path every LLM call of a run takes, a single-agent run
(step ``main``) and each step of a workflow alike. Its stages, in this order (each
feature of the service hooks in at its stage, not around the caller):

1. resolve the agent's definition and its model's price (``definitions``, ``costs``);
2. build the messages and fit them into the model's context window (``context``);
3. answer from the response cache when the request may be cached (``cache``);
4. call the providers (``llm``: retries, failover, breakers), running tool calls the model
   asks for (``tools``);
5. check the answer against the quality gate, re-asking with the reasons (``quality``);
6. count usage and cost (``metrics``), send the cost to apex.data (``costs``), record
   the audit events (``audit``) and the trace span (``tracing``: the call of stage 4 is
   a span of its own, with the provider's usage).

The caller raises :class:`apex.agents.llm.LlmError` (``reason``: the contract's error
code) when the step has no answer.
"""

from __future__ import annotations

import dataclasses

from openai.types.chat import ChatCompletionMessageParam

from apex.agents.audit import AuditLog
from apex.agents.config import AgentConfig
from apex.agents.cost_records import CostLedger, CostRecord
from apex.agents.costs import cost_micros
from apex.agents.definitions import DefinitionError, DefinitionStore
from apex.agents.llm import LlmError, Provider
from apex.agents.metrics import Metrics
from apex.agents.runs import Run, Usage
from apex.agents.settings import AgentSettings
from apex.agents.tools import converse
from apex.agents.tracing import Tracing

__all__ = ["MAIN_STEP", "AgentCaller", "CallContext"]

# The step name of a single-agent run's one call (a workflow's steps have their own ids).
MAIN_STEP = "main"


@dataclasses.dataclass(frozen=True)
class CallContext:
    """Who a call is for: the run (tenant, id) and the step of it making the call, and
    the config the run captured when it started (kept to its end: a reload applies to
    runs that start after it)."""

    run: Run
    step: str
    config: AgentConfig


class AgentCaller:
    """Makes one agent call of a run (the stages in the module's docstring)."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        provider: Provider,
        metrics: Metrics,
        definitions: DefinitionStore,
        audit: AuditLog,
        costs: CostLedger | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._settings = settings
        self._provider = provider
        self._metrics = metrics
        self._definitions = definitions
        self._costs = costs
        self._audit = audit
        self._tracing = tracing if tracing is not None else Tracing(None)

    async def call(self, context: CallContext, agent_name: str, text: str) -> tuple[str, Usage]:
        """The answer of ``agent_name`` to ``text`` and its usage (counted in the metrics);
        LlmError when there is none."""
        await self._audit.record(context.run, "step.started", step=context.step, agent=agent_name)
        pinned = context.run.agent_version if agent_name == context.run.agent else None
        agent = await self._definitions.agent(agent_name, pinned)
        model = context.config.models.get(agent.model) if agent is not None else None
        if agent is None or model is None:
            raise LlmError("unknown_agent", f"no agent {agent_name!r} or no price of its model", 0)
        try:
            tools = await self._definitions.tools_of(agent)
        except DefinitionError as exc:
            raise LlmError(exc.code, exc.detail, 0) from None
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": agent.system},
            {"role": "user", "content": text},
        ]
        try:
            completion = await converse(
                lambda history, specs: self._tracing.llm_call(
                    self._provider.complete(
                        agent.model, history, max_tokens=agent.max_tokens, tools=specs
                    ),
                    run_id=context.run.id,
                    step=context.step,
                    model=agent.model,
                    provider=self._provider.name,
                ),
                messages,
                tools,
                context.run.permissions,
            )
        except LlmError as exc:
            self._count_calls(exc.attempts, ok=False)
            self._metrics.step_errors.labels(exc.reason).inc()
            await self._audit.record(
                context.run,
                "llm.failed",
                step=context.step,
                provider=self._provider.name,
                model=agent.model,
                error=exc.reason,
                attempts=exc.attempts,
            )
            raise
        self._count_calls(completion.attempts, ok=True)
        usage = Usage(
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            # Rounded up once per provider call (notes-agents.md), summed over the rounds.
            cost_micros=sum(
                cost_micros(model, r.prompt_tokens, r.completion_tokens) for r in completion.rounds
            ),
            provider=self._provider.name,
            attempts=completion.attempts,
            tool_calls=completion.tool_calls,
        )
        self._count_tokens(agent.model, usage)
        if self._costs is not None:  # stage 6: the cost on its way to apex.data
            await self._costs.append(_record(context, 1, agent_name, agent.model, usage))
        await self._audit.record(
            context.run,
            "llm.called",
            step=context.step,
            provider=usage.provider,
            model=agent.model,
            tokens={"prompt": usage.prompt_tokens, "completion": usage.completion_tokens},
            cost_micros=usage.cost_micros,
            cached=False,
            attempts=usage.attempts,
        )
        for record in usage.tool_calls:
            kind = "tool.called" if record.get("allowed") else "tool.denied"
            await self._audit.record(
                context.run,
                kind,
                step=context.step,
                tool=record.get("name"),
                version=record.get("version"),
                error=record.get("error"),
            )
        return completion.content, usage

    def _count_calls(self, attempts: int, *, ok: bool) -> None:
        calls = self._metrics.llm_calls
        name = self._provider.name
        calls.labels(name, "retried").inc(attempts - 1)
        calls.labels(name, "ok" if ok else "failed").inc()

    def _count_tokens(self, model_name: str, usage: Usage) -> None:
        self._metrics.tokens.labels(model_name, "prompt").inc(usage.prompt_tokens)
        self._metrics.tokens.labels(model_name, "completion").inc(usage.completion_tokens)
        self._metrics.cost.labels(model_name).inc(usage.cost_micros)


def _record(context: CallContext, call: int, agent: str, model: str, usage: Usage) -> CostRecord:
    """The cost record of the ``call``-th answered LLM call of the context's step."""
    run = context.run
    return CostRecord.now(
        tenant_id=str(run.tenant_id),
        user_id=run.user_id,
        run_id=str(run.id),
        step=context.step,
        call=call,
        agent=agent,
        model=model,
        provider=usage.provider,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cost_micros=usage.cost_micros,
    )
