"""The LLM fake's token estimator: the exact `usage` it reports, as a documented rule.

No tokenizer library: tiktoken downloads its encodings at first use, which these machines
cannot. The rule is deterministic and simple enough for a service to reimplement (for
context-window management) and for a test to compute by hand:

- text: a run of word characters (`\\w+`) is one token, each other non-space character
  is one token, whitespace is free: `"Hello, world!"` is 4 tokens;
- a chat message: 3 + tokens(role) + tokens(content) + (1 + tokens(name) if it has a
  name) + for each tool call tokens(function name) + tokens(arguments); content given as
  parts counts its text parts, and 85 for each image part;
- a chat prompt: the sum over its messages, + 3 (priming the reply), + tokens of the
  `tools` list serialised as compact JSON with sorted keys, if the request has tools;
- a completion: tokens(content) + for each tool call tokens(name) + tokens(arguments);
- an embeddings input: tokens of each string, or the length of each token array.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

_TOKEN = re.compile(r"\w+|[^\w\s]")
PER_MESSAGE = 3
REPLY_PRIMING = 3
IMAGE_PART = 85


def count_tokens(text: str) -> int:
    """Tokens of `text`: word runs and single non-space characters."""
    return len(_TOKEN.findall(text))


def truncate(text: str, tokens: int) -> str:
    """The longest prefix of `text` holding `tokens` tokens (what `max_tokens` keeps)."""
    if tokens <= 0:
        return ""
    for n, match in enumerate(_TOKEN.finditer(text), start=1):
        if n == tokens:
            return text[: match.end()]
    return text


def _content_tokens(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_tokens(content)
    total = 0
    for part in content:
        if isinstance(part, Mapping) and part.get("type") == "text":
            total += count_tokens(str(part.get("text", "")))
        elif isinstance(part, Mapping) and part.get("type") in ("image_url", "input_image"):
            total += IMAGE_PART
        elif isinstance(part, Mapping):
            total += count_tokens(json.dumps(part, sort_keys=True, separators=(",", ":")))
    return total


def tool_call_tokens(tool_calls: Sequence[Mapping[str, Any]] | None) -> int:
    """Tokens of a message's `tool_calls`: each function's name and arguments."""
    total = 0
    for call in tool_calls or ():
        function = call.get("function") or {}
        total += count_tokens(str(function.get("name", "")))
        total += count_tokens(str(function.get("arguments", "")))
    return total


def message_tokens(message: Mapping[str, Any]) -> int:
    """Tokens one chat message costs in a prompt."""
    total = PER_MESSAGE + count_tokens(str(message.get("role", "")))
    total += _content_tokens(message.get("content"))
    if message.get("name"):
        total += 1 + count_tokens(str(message["name"]))
    return total + tool_call_tokens(message.get("tool_calls"))


def prompt_tokens(messages: Sequence[Mapping[str, Any]], tools: Any = None) -> int:
    """`usage.prompt_tokens` of a chat completion request."""
    total = REPLY_PRIMING + sum(message_tokens(m) for m in messages)
    if tools:
        total += count_tokens(json.dumps(tools, sort_keys=True, separators=(",", ":")))
    return total


def completion_tokens(content: str | None, tool_calls: Sequence[Mapping[str, Any]] = ()) -> int:
    """`usage.completion_tokens` of an answer."""
    return count_tokens(content or "") + tool_call_tokens(tool_calls)


def embedding_tokens(inputs: Sequence[str | Sequence[int]]) -> int:
    """`usage.prompt_tokens` of an embeddings request."""
    return sum(count_tokens(i) if isinstance(i, str) else len(i) for i in inputs)


__all__ = [
    "completion_tokens",
    "count_tokens",
    "embedding_tokens",
    "message_tokens",
    "prompt_tokens",
    "tool_call_tokens",
    "truncate",
]
