"""The LLM provider, through the official ``openai`` SDK (``AsyncOpenAI``).

The SDK's own retries are off (``max_retries=0``): :class:`Provider` retries a 429, a 5xx,
a timeout or a lost connection itself, up to ``APEX_LLM_RETRIES`` times after the first
attempt, waiting the provider's ``retry-after`` on a 429 (capped at the call timeout) and
a short full-jitter backoff otherwise (``APEX_LLM_BACKOFF``). Any other error (400, 401,
404: the request itself is wrong) fails at once. Each request carries the current span's
``traceparent`` (``apex.agents.tracing``). Cancelling the awaiting task closes the HTTP
connection: the provider sees the client go away.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Final

import openai
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionMessageParam,
    ChatCompletionToolParam,
)

from apex.agents.jobs import backoff
from apex.agents.tracing import trace_headers
from apex.common.tls import client_tls_context

__all__ = ["Completion", "LlmError", "LlmToolCall", "Provider"]

_RETRYABLE: Final = (
    openai.RateLimitError,
    openai.InternalServerError,
    openai.APITimeoutError,
    openai.APIConnectionError,
)


@dataclasses.dataclass(frozen=True)
class LlmToolCall:
    """A function call the model asked for: its id, the function and its arguments (the
    JSON text the model wrote, unparsed)."""

    id: str
    name: str
    arguments: str


@dataclasses.dataclass(frozen=True)
class Completion:
    """One answer: its text, the tool calls it asks for, and the provider's reported usage."""

    content: str
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    tool_calls: tuple[LlmToolCall, ...] = ()
    # "stop", or "length" when max_tokens cut the answer (the quality gate refuses it);
    # "tool_calls" when the model asked for tools.
    finish_reason: str = "stop"


class LlmError(Exception):
    """The provider did not answer: ``reason`` is the contract's error code."""

    def __init__(self, reason: str, detail: str, attempts: int) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.attempts = attempts


class Provider:
    """One OpenAI-compatible provider."""

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str,
        *,
        timeout: float,
        retries: int,
        backoff: tuple[float, float],
    ) -> None:
        self.name = name
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        # The SDK's own HTTP client would load the CA bundle afresh for every provider
        # an app starts with (tens of milliseconds each): it verifies with the process's.
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(verify=client_tls_context()),
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def complete(
        self,
        model: str,
        messages: Sequence[ChatCompletionMessageParam],
        *,
        max_tokens: int,
        tools: Sequence[ChatCompletionToolParam] = (),
        temperature: float | None = None,
    ) -> Completion:
        """The provider's answer to ``messages`` (offering ``tools``, if any; at
        ``temperature``, None: the provider's default); LlmError when it gave none."""
        attempt = 0
        while True:
            attempt += 1
            try:
                answer = await self._create(model, messages, max_tokens, tools, temperature)
            except _RETRYABLE as exc:
                if attempt > self._retries:
                    raise LlmError(
                        "provider_unavailable",
                        f"{self.name}: {type(exc).__name__} after {attempt} attempt(s)",
                        attempt,
                    ) from exc
                await asyncio.sleep(self.retry_wait(exc, attempt))
                continue
            except openai.APIError as exc:
                raise LlmError("provider_error", f"{self.name}: {exc}", attempt) from exc
            if answer.usage is None or not answer.choices:
                raise LlmError("provider_error", f"{self.name}: no usage or no choice", attempt)
            message = answer.choices[0].message
            return Completion(
                content=message.content or "",
                prompt_tokens=answer.usage.prompt_tokens,
                completion_tokens=answer.usage.completion_tokens,
                attempts=attempt,
                tool_calls=_tool_calls(message.tool_calls),
                finish_reason=answer.choices[0].finish_reason,
            )

    async def _create(
        self,
        model: str,
        messages: Sequence[ChatCompletionMessageParam],
        max_tokens: int,
        tools: Sequence[ChatCompletionToolParam],
        temperature: float | None,
    ) -> ChatCompletion:
        """One request; ``tools`` only when there are some (a request without tools is
        unchanged by them)."""
        create = self._client.chat.completions.create
        # The request carries the current span's `traceparent` (apex.agents.tracing).
        headers = trace_headers()
        if tools:
            return await create(
                model=model,
                messages=list(messages),
                max_tokens=max_tokens,
                temperature=temperature,
                tools=list(tools),
                extra_headers=headers,
            )
        return await create(
            model=model,
            messages=list(messages),
            max_tokens=max_tokens,
            temperature=temperature,
            extra_headers=headers,
        )

    def retry_wait(self, exc: Exception, attempt: int) -> float:
        """Seconds before the next attempt: a 429's retry-after (at most the call timeout),
        else exponential backoff with full jitter: uniform(0, min(cap, base * 2^attempt))
        after failed attempt number ``attempt`` (APEX_LLM_BACKOFF ``base/cap``)."""
        if isinstance(exc, openai.RateLimitError):
            after = _retry_after(exc.response.headers)
            if after is not None:
                return min(after, self._timeout)
        base, cap = self._backoff
        # jobs.backoff(n, ...) is uniform(0, min(cap, base * 2^(n-1))).
        return backoff(attempt + 1, base, cap)


def _tool_calls(calls: Sequence[object] | None) -> tuple[LlmToolCall, ...]:
    """The function calls of an answer (other kinds of tool call have no function)."""
    found = []
    for call in calls or ():
        function = getattr(call, "function", None)
        if function is not None:
            found.append(
                LlmToolCall(str(getattr(call, "id", "")), function.name, function.arguments)
            )
    return tuple(found)


def _retry_after(headers: object) -> float | None:
    """``retry-after-ms`` (milliseconds) or ``retry-after`` (seconds), if present."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        text = get(name)
        if text is None:
            continue
        try:
            value = float(text) * scale
        except ValueError:
            continue
        if value >= 0:
            return value
    return None
