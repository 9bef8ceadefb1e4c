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

from apex.agents.costs import cost_micros
from apex.agents.definitions import BUILTIN_AGENTS
from apex.agents.llm import LlmError, Provider
from apex.agents.metrics import Metrics
from apex.agents.runs import Run, Usage
from apex.agents.settings import AgentSettings
from apex.agents.tracing import Tracing

__all__ = ["MAIN_STEP", "AgentCaller", "CallContext"]

# The step name of a single-agent run's one call (a workflow's steps have their own ids).
MAIN_STEP = "main"


@dataclasses.dataclass(frozen=True)
class CallContext:
    """Who a call is for: the run (tenant, id) and the step of it making the call."""

    run: Run
    step: str


class AgentCaller:
    """Makes one agent call of a run (the stages in the module's docstring)."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        provider: Provider,
        metrics: Metrics,
        tracing: Tracing | None = None,
    ) -> None:
        self._settings = settings
        self._provider = provider
        self._metrics = metrics
        self._tracing = tracing if tracing is not None else Tracing(None)

    async def call(self, context: CallContext, agent_name: str, text: str) -> tuple[str, Usage]:
        """The answer of ``agent_name`` to ``text`` and its usage (counted in the metrics);
        LlmError when there is none."""
        agent = BUILTIN_AGENTS.get(agent_name)
        model = self._settings.models.get(agent.model) if agent is not None else None
        if agent is None or model is None:
            raise LlmError("unknown_agent", f"no agent {agent_name!r} or no price of its model", 0)
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": agent.system},
            {"role": "user", "content": text},
        ]
        try:
            completion = await self._tracing.llm_call(
                self._provider.complete(agent.model, messages, max_tokens=agent.max_tokens),
                run_id=context.run.id,
                step=context.step,
                model=agent.model,
                provider=self._provider.name,
            )
        except LlmError as exc:
            self._count_calls(exc.attempts, ok=False)
            raise
        self._count_calls(completion.attempts, ok=True)
        usage = Usage(
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            cost_micros=cost_micros(model, completion.prompt_tokens, completion.completion_tokens),
            provider=self._provider.name,
            attempts=completion.attempts,
        )
        self._count_tokens(agent.model, usage)
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
