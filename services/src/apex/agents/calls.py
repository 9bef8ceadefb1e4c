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
   the audit events (``audit``) and the trace span (``tracing``: the call of stage 4 is
   a span of its own, with the provider's usage).

Stages 2 to 5 repeat for each re-ask of the quality gate (the conversation grows by the
failing answer and the follow-up message, so stage 2 may drop its oldest messages); the
step's usage is the sum over its attempts.

The caller raises :class:`apex.agents.llm.LlmError` (``reason``: the contract's error
code) when the step has no answer: :class:`apex.agents.context.ContextTooLarge` before
any call, :class:`apex.agents.quality.QualityRejected` (with the usage spent) when every
attempt failed the gate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from apex.agents import quality
from apex.agents.audit import AuditLog
from apex.agents.cache import ResponseCache, key_of
from apex.agents.config import AgentConfig
from apex.agents.context import fit
from apex.agents.cost_records import CostLedger, CostRecord
from apex.agents.costs import Model, cost_micros
from apex.agents.definitions import Agent, DefinitionError, DefinitionStore
from apex.agents.failover import Failover
from apex.agents.llm import Completion, LlmError
from apex.agents.metrics import Metrics
from apex.agents.runs import Run, Usage
from apex.agents.settings import AgentSettings
from apex.agents.tools import Conversation, Tool, converse
from apex.agents.tracing import Tracing

__all__ = ["MAIN_STEP", "AgentCaller", "CallContext"]

# The step name of a single-agent run's one call (a workflow's steps have their own ids).
MAIN_STEP = "main"
# The provider a cached answer is recorded under (in provider_path): no provider answered.
CACHE_PROVIDER = "cache"


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
        providers: Failover,
        metrics: Metrics,
        definitions: DefinitionStore,
        audit: AuditLog,
        cache: ResponseCache | None = None,
        costs: CostLedger | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._settings = settings
        self._providers = providers
        self._metrics = metrics
        self._definitions = definitions
        self._audit = audit
        self._cache = cache
        self._costs = costs
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
        spent: Usage | None = None
        reasons: list[str] = []
        for attempt in range(1, self._settings.quality_retries + 2):
            request = fit(
                messages, context_window=model.context_window, max_tokens=agent.max_tokens
            )
            digest = self._cache_key(context, agent, tools, request)
            completion, usage = await self._answer(
                context, agent, model, tools, request, digest, call=attempt
            )
            spent = usage if spent is None else _plus(spent, usage)
            reasons = quality.check(
                completion.content,
                finish_reason=completion.finish_reason,
                output_schema=agent.output_schema,
            )
            self._metrics.quality.labels("failed" if reasons else "passed").inc()
            if not reasons:
                if digest is not None and not usage.cached and self._cache is not None:
                    await self._cache.put(digest, completion.content)
                return completion.content, spent
            await self._audit.record(
                context.run, "quality.failed", step=context.step, reasons=list(reasons)
            )
            messages.append({"role": "assistant", "content": completion.content})
            messages.append({"role": "user", "content": quality.reask(reasons)})
        assert spent is not None  # noqa: S101 - the loop ran at least once
        raise quality.QualityRejected(reasons, spent)

    def _cache_key(
        self,
        context: CallContext,
        agent: Agent,
        tools: Mapping[str, Tool],
        request: list[ChatCompletionMessageParam],
    ) -> str | None:
        """The request's cache digest; None when it is not to be cached (cache off, the
        run's ``cache: false``, a temperature other than 0, a tool needing a permission)."""
        if self._cache is None or not self._cache.enabled or not context.run.use_cache:
            return None
        # A tool's result may depend on the asker's permissions, which the key does not
        # hold: such an answer is never shared (notes-agents.md § Merging tools and gate).
        if any(tool.permission is not None for tool in tools.values()):
            return None
        return key_of(
            agent.model,
            request,
            temperature=agent.temperature,
            max_tokens=agent.max_tokens,
            tools=[tool.spec() for tool in tools.values()],
        )

    async def _answer(
        self,
        context: CallContext,
        agent: Agent,
        model: Model,
        tools: Mapping[str, Tool],
        request: list[ChatCompletionMessageParam],
        digest: str | None,
        *,
        call: int,
    ) -> tuple[Conversation, Usage]:
        """The cached answer to ``request`` (zero usage and cost) or the provider's, with
        the tool calls it asked for run (``tools.converse``); the ``call``-th of the step.
        Each answer is audited (``llm.called``, ``cached``) and its cost sent on."""
        if digest is not None and self._cache is not None:
            content = await self._cache.get(digest)
            self._metrics.cache.labels("miss" if content is None else "hit").inc()
            if content is not None:
                hit = Completion(content=content, prompt_tokens=0, completion_tokens=0, attempts=0)
                usage = Usage(0, 0, 0, provider=CACHE_PROVIDER, attempts=0, cached=True)
                await self._audit_answer(context, agent, usage)
                return Conversation((hit,), ()), usage
        answered: list[str] = []  # who answered each round (failover may switch)
        chain = self._providers.chain

        async def one_round(
            history: list[ChatCompletionMessageParam], specs: list[ChatCompletionToolParam]
        ) -> Completion:
            # Stage 4: failover across the providers (requests counted per provider there).
            answer = await self._providers.complete(
                agent.model,
                history,
                max_tokens=agent.max_tokens,
                temperature=agent.temperature,
                tools=specs,
                on_open=lambda provider: self._audit.record(
                    context.run, "breaker.opened", step=context.step, provider=provider
                ),
            )
            answered.append(answer.provider)
            return dataclasses.replace(answer.completion, attempts=answer.attempts)

        try:
            conversation = await converse(
                lambda history, specs: self._tracing.llm_call(
                    one_round(history, specs),
                    run_id=context.run.id,
                    step=context.step,
                    model=agent.model,
                    provider=chain,
                    answered_by=lambda: answered[-1],
                ),
                request,
                tools,
                context.run.permissions,
            )
        except LlmError as exc:
            self._metrics.step_errors.labels(exc.reason).inc()
            await self._audit.record(
                context.run,
                "llm.failed",
                step=context.step,
                provider=chain,
                model=agent.model,
                error=exc.reason,
                attempts=exc.attempts,
            )
            raise
        usage = Usage(
            prompt_tokens=conversation.prompt_tokens,
            completion_tokens=conversation.completion_tokens,
            # Rounded up once per provider call (notes-agents.md), summed over the rounds.
            cost_micros=sum(
                cost_micros(model, r.prompt_tokens, r.completion_tokens)
                for r in conversation.rounds
            ),
            provider=answered[-1],
            attempts=conversation.attempts,
            tool_calls=conversation.tool_calls,
        )
        self._count_tokens(agent.model, usage)
        if self._costs is not None:  # stage 6: the cost on its way to apex.data
            await self._costs.append(_record(context, call, agent.name, agent.model, usage))
        await self._audit_answer(context, agent, usage)
        return conversation, usage

    async def _audit_answer(self, context: CallContext, agent: Agent, usage: Usage) -> None:
        """An answer in the audit trail: ``llm.called``, then each tool call it made."""
        await self._audit.record(
            context.run,
            "llm.called",
            step=context.step,
            provider=usage.provider,
            model=agent.model,
            tokens={"prompt": usage.prompt_tokens, "completion": usage.completion_tokens},
            cost_micros=usage.cost_micros,
            cached=usage.cached,
            attempts=usage.attempts,
        )
        for record in usage.tool_calls:
            await self._audit.record(
                context.run,
                "tool.called" if record.get("allowed") else "tool.denied",
                step=context.step,
                tool=record.get("name"),
                version=record.get("version"),
                error=record.get("error"),
            )

    def _count_tokens(self, model_name: str, usage: Usage) -> None:
        self._metrics.tokens.labels(model_name, "prompt").inc(usage.prompt_tokens)
        self._metrics.tokens.labels(model_name, "completion").inc(usage.completion_tokens)
        self._metrics.cost.labels(model_name).inc(usage.cost_micros)


def _plus(before: Usage, after: Usage) -> Usage:
    """Two attempts' usage together: tokens, cost and attempts summed, tool calls in
    order; the later one's provider; cached only when both were."""
    return Usage(
        prompt_tokens=before.prompt_tokens + after.prompt_tokens,
        completion_tokens=before.completion_tokens + after.completion_tokens,
        cost_micros=before.cost_micros + after.cost_micros,
        provider=after.provider,
        attempts=before.attempts + after.attempts,
        tool_calls=before.tool_calls + after.tool_calls,
        cached=before.cached and after.cached,
    )


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
