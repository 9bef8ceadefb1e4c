"""Failover across the LLM providers, each behind its circuit breaker.

:class:`Failover` asks the providers in order (``llm``, then ``llm_fallback`` when
configured). A provider whose breaker is open is skipped without a request; a provider
that stays unavailable past its retries (``provider_unavailable``) counts a failure on its
breaker and hands the call to the next. When none answers, the call fails
``providers_unavailable``. A provider that refuses the request itself
(``provider_error``: a 4xx, a malformed answer) ends the call: the next provider would
refuse it too, and the provider is up (its breaker counts a success). Requests per
provider and result are counted in ``apex_agents_llm_calls_total``; each breaker's state
is the ``apex_agents_breaker_state`` gauge, its openings
``apex_agents_breaker_opened_total``; a call whose failure opens a breaker (or opens it
again after a failed trial) tells its ``on_open`` (the run's ``breaker.opened`` audit
event).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence

from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from apex.agents.breaker import Breaker, State
from apex.agents.llm import Completion, LlmError, Provider
from apex.agents.metrics import Metrics

__all__ = ["Answer", "Failover", "OnOpen"]

# Told the name of a provider whose breaker a call's failure opened.
OnOpen = Callable[[str], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class Answer:
    """A provider's answer: who gave it, and the requests the call sent to every provider
    it tried (failed attempts included)."""

    completion: Completion
    provider: str
    attempts: int


class Failover:
    """The providers in order, a breaker each (its state is this process's)."""

    def __init__(
        self, providers: Sequence[Provider], *, failures: int, reset: float, metrics: Metrics
    ) -> None:
        if not providers:
            raise ValueError("failover needs at least one provider")
        self._metrics = metrics
        self._chain: list[tuple[Provider, Breaker]] = []
        for provider in providers:
            opened = metrics.breaker_opened.labels(provider.name)
            breaker = Breaker(failures, reset, on_open=opened.inc)
            metrics.breaker_state.labels(provider.name).set_function(_state_of(breaker))
            self._chain.append((provider, breaker))

    def states(self) -> dict[str, str]:
        """Each provider's breaker state (closed, open, half_open), in order."""
        return {provider.name: breaker.state.label for provider, breaker in self._chain}

    def available(self) -> bool:
        """Whether some provider may be asked now (its breaker not open)."""
        return any(breaker.state is not State.OPEN for _, breaker in self._chain)

    async def aclose(self) -> None:
        for provider, _ in self._chain:
            await provider.aclose()

    @property
    def chain(self) -> str:
        """The providers' names in order, as one label (``llm>llm_fallback``)."""
        return ">".join(provider.name for provider, _ in self._chain)

    async def complete(
        self,
        model: str,
        messages: Sequence[ChatCompletionMessageParam],
        *,
        max_tokens: int,
        tools: Sequence[ChatCompletionToolParam] = (),
        temperature: float | None = None,
        on_open: OnOpen | None = None,
    ) -> Answer:
        """The first provider's answer, in order; LlmError ``providers_unavailable`` when
        none answered, ``provider_error`` when one refused the request. ``on_open`` is told
        each provider whose breaker this call's failure opened."""
        attempts = 0
        down: list[str] = []
        for provider, breaker in self._chain:
            if not breaker.allow():
                down.append(f"{provider.name}: breaker open")
                continue
            settled = False
            try:
                completion = await provider.complete(
                    model, messages, max_tokens=max_tokens, tools=tools, temperature=temperature
                )
                settled = True
            except LlmError as exc:
                settled = True
                attempts += exc.attempts
                self._count(provider.name, exc.attempts, ok=False)
                if exc.reason != "provider_unavailable":
                    breaker.success()  # it answered: the request is what it refused
                    raise LlmError(exc.reason, exc.detail, attempts) from exc
                was_open = breaker.state is State.OPEN
                breaker.failure()
                if on_open is not None and not was_open and breaker.state is State.OPEN:
                    await on_open(provider.name)
                down.append(exc.detail)
                continue
            finally:
                if not settled:
                    breaker.abandon()  # cancelled: no verdict on the provider
            breaker.success()
            self._count(provider.name, completion.attempts, ok=True)
            return Answer(completion, provider.name, attempts + completion.attempts)
        raise LlmError("providers_unavailable", "; ".join(down), attempts)

    def _count(self, name: str, attempts: int, *, ok: bool) -> None:
        calls = self._metrics.llm_calls
        calls.labels(name, "retried").inc(attempts - 1)
        calls.labels(name, "ok" if ok else "failed").inc()


def _state_of(breaker: Breaker) -> Callable[[], float]:
    """The gauge's reading of ``breaker``: its state's code."""
    return lambda: breaker.state.value
