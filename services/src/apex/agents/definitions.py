"""Agent definitions: the built-in agents a run may name.

This slice has one built-in agent, ``assistant`` (a single LLM call with a system
message); ``POST /v1/agents`` and versioned tool ranges come later (contract-agents.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = ["BUILTIN_AGENTS", "Agent"]


@dataclasses.dataclass(frozen=True)
class Agent:
    """An agent: its model, its system message and its answer's token bound."""

    name: str
    version: str
    model: str
    system: str
    max_tokens: int


BUILTIN_AGENTS: Final[Mapping[str, Agent]] = MappingProxyType(
    {
        "assistant": Agent(
            name="assistant",
            version="1.0.0",
            model="gpt-4o-mini",
            system="You are a helpful assistant.",
            max_tokens=256,
        ),
    }
)
