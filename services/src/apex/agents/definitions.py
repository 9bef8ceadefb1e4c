"""Agent definitions: the built-in agents a run may name.

The built-in agents: ``assistant`` (a single LLM call with a system message) and
``extractor`` (answers JSON only, checked against its ``output_schema`` by the quality
gate); ``POST /v1/agents`` and versioned tool ranges come later (contract-agents.md).
Every agent asks at ``temperature`` 0 unless its definition says otherwise (so its
answers may be cached: only temperature 0 requests are).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

__all__ = ["BUILTIN_AGENTS", "Agent"]


@dataclasses.dataclass(frozen=True)
class Agent:
    """An agent: its model, its system message, its answer's token bound, its sampling
    temperature and the JSON Schema its answer must satisfy (None: free text)."""

    name: str
    version: str
    model: str
    system: str
    max_tokens: int
    temperature: float = 0.0
    output_schema: Mapping[str, Any] | None = None


BUILTIN_AGENTS: Final[Mapping[str, Agent]] = MappingProxyType(
    {
        "assistant": Agent(
            name="assistant",
            version="1.0.0",
            model="gpt-4o-mini",
            system="You are a helpful assistant.",
            max_tokens=256,
        ),
        "extractor": Agent(
            name="extractor",
            version="1.0.0",
            model="gpt-4o-mini",
            system=(
                "Extract the city and the country the text names. Answer with a JSON "
                'object {"city": ..., "country": ...} and nothing else.'
            ),
            max_tokens=256,
            output_schema=MappingProxyType(
                {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
                    "required": ["city", "country"],
                    "additionalProperties": False,
                }
            ),
        ),
    }
)
