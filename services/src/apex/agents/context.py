"""The context window: how many tokens a request takes, and fitting it into its model.

The estimator (no tokenizer library: tiktoken downloads its encodings at first use) is
``ceil(utf8_bytes / 4) + 4`` per message, where ``utf8_bytes`` is the size in UTF-8 of
the message's text: its ``content`` (text parts of a list content), and for an assistant
message's tool calls each function's name and arguments. A request fits its model when
its messages' estimates sum to at most ``context_window - max_tokens`` (the answer's room
is kept free).

:func:`fit` drops the oldest messages that are neither a system message nor the last
user message until the request fits; an assistant message that asked for tool calls goes
with the tool results answering it (a tool result without its call is not a valid
request). When the system messages and the last user message alone do not fit, it raises
:class:`ContextTooLarge` (``context_too_large``) and no LLM call is made.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from openai.types.chat import ChatCompletionMessageParam

from apex.agents.llm import LlmError

__all__ = [
    "PER_MESSAGE",
    "ContextTooLarge",
    "budget",
    "check_input",
    "estimate",
    "fit",
    "request_tokens",
]

# Tokens every message costs beyond its text (its role and the framing around it).
PER_MESSAGE: Final = 4
_BYTES_PER_TOKEN: Final = 4


class ContextTooLarge(LlmError):
    """The system message and the last user message alone exceed the model's room."""

    def __init__(self, needed: int, room: int) -> None:
        super().__init__(
            "context_too_large",
            f"the request needs {needed} tokens at least; the model leaves {room} for it "
            "(context_window - max_tokens)",
            0,
        )
        self.needed = needed
        self.room = room


def _text(message: Mapping[str, Any]) -> str:
    """The text of a message the estimator counts."""
    content = message.get("content")
    parts: list[str] = []
    if isinstance(content, str):
        parts.append(content)
    elif content is not None:
        parts.extend(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        parts.append(str(function.get("name", "")))
        parts.append(str(function.get("arguments", "")))
    return "".join(parts)


def estimate(message: Mapping[str, Any]) -> int:
    """The estimated tokens of one message: ``ceil(utf8_bytes / 4) + 4``."""
    return math.ceil(len(_text(message).encode("utf-8")) / _BYTES_PER_TOKEN) + PER_MESSAGE


def request_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """The estimated tokens of a request's messages."""
    return sum(estimate(message) for message in messages)


def budget(context_window: int, max_tokens: int) -> int:
    """The tokens a request's messages may take: the window less the answer's room."""
    return context_window - max_tokens


def _last_user(messages: Sequence[Mapping[str, Any]]) -> int | None:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "user":
            return index
    return None


def fit(
    messages: Sequence[ChatCompletionMessageParam], *, context_window: int, max_tokens: int
) -> list[ChatCompletionMessageParam]:
    """``messages`` with the oldest droppable ones dropped until they fit the model's room
    (the module's docstring); ContextTooLarge when even the kept ones do not."""
    room = budget(context_window, max_tokens)
    last_user = _last_user(messages)
    kept = [
        index
        for index, message in enumerate(messages)
        if message.get("role") == "system" or index == last_user
    ]
    needed = sum(estimate(messages[index]) for index in kept)
    if needed > room:
        raise ContextTooLarge(needed, room)
    present = list(range(len(messages)))
    total = request_tokens(messages)
    while total > room:
        oldest = next(index for index in present if index not in kept)
        dropped = [oldest]
        if messages[oldest].get("tool_calls"):
            # Its tool results go with it.
            follower = present.index(oldest) + 1
            while follower < len(present) and messages[present[follower]].get("role") == "tool":
                dropped.append(present[follower])
                follower += 1
        for index in dropped:
            present.remove(index)
            total -= estimate(messages[index])
    return [messages[index] for index in present]


def check_input(system: str, text: str, *, context_window: int, max_tokens: int) -> None:
    """ContextTooLarge unless an agent's first request (its system message and ``text`` as
    the user message) fits: what a run's submit checks before anything is stored."""
    fit(
        [{"role": "system", "content": system}, {"role": "user", "content": text}],
        context_window=context_window,
        max_tokens=max_tokens,
    )
