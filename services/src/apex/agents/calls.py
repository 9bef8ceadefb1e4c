"""One agent call: what a run's step does, from its agent's name to an answer and its cost.

:class:`AgentCaller` is the one path every LLM call of a run takes, a single-agent run
(step ``main``) and each step of a workflow alike. Its stages, in this order (each
feature of the service hooks in at its stage, not around the caller):

1. resolve the agent's definition and its model's price (``definitions``, ``costs``);
2. build the messages and fit them into the model's context window (``context``);
3. answer from the response cache when the request may be cached (``cache``);
4. call the providers (``failover``: in order, each behind its ``breaker``; ``llm``:
   retries), running tool calls the model asks for (``tools``);
5. check the answer against the quality gate, re-asking with the reasons (``quality``);
6. count usage and cost (``metrics``), send the cost to apex.data (``costs``), record
   the audit events (``audit``) and the trace span (``tracing``).

The caller raises :class:`apex.agents.llm.LlmError` (``reason``: the contract's error
code) when the step has no answer.
"""

from __future__ import annotations

import dataclasses

from openai.types.chat import ChatCompletionMessageParam

from apex.agents.costs import cost_micros
from apex.agents.definitions import BUILTIN_AGENTS
from apex.agents.failover import Failover
from apex.agents.llm import LlmError
from apex.agents.metrics import Metrics
from apex.agents.runs import Run, Usage
from apex.agents.settings import AgentSettings

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

    def __init__(self, settings: AgentSettings, *, providers: Failover, metrics: Metrics) -> None:
        self._settings = settings
        self._providers = providers
        self._metrics = metrics

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
        # Stage 4: failover across the providers (requests counted per provider there).
        answer = await self._providers.complete(agent.model, messages, max_tokens=agent.max_tokens)
        completion = answer.completion
        usage = Usage(
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            cost_micros=cost_micros(model, completion.prompt_tokens, completion.completion_tokens),
            provider=answer.provider,
            attempts=answer.attempts,
        )
        self._count_tokens(agent.model, usage)
        return completion.content, usage

    def _count_tokens(self, model_name: str, usage: Usage) -> None:
        self._metrics.tokens.labels(model_name, "prompt").inc(usage.prompt_tokens)
        self._metrics.tokens.labels(model_name, "completion").inc(usage.completion_tokens)
        self._metrics.cost.labels(model_name).inc(usage.cost_micros)
