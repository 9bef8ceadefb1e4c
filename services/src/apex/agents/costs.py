"""What an LLM call costs: the model table and the cost of a provider's ``usage``.

A model's price is in micro-dollars per 1,000 tokens, input and output apart. The cost of
a call is ``ceil((prompt_tokens * input + completion_tokens * output) / 1000)`` micros:
rounded up once per call, so a call that used tokens never costs 0 at a non-zero price.
The tokens are always the provider's reported ``usage``, never an estimate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = ["DEFAULT_MODELS", "Model", "cost_micros"]


@dataclasses.dataclass(frozen=True)
class Model:
    """One model: its context window (tokens) and its prices (micros per 1,000 tokens)."""

    context_window: int
    input_micros_per_1k: int
    output_micros_per_1k: int


# The documented default (OpenAI's list prices: gpt-4o-mini $0.15/$0.60 per million
# tokens, gpt-4o $2.50/$10); APEX_MODELS replaces the whole table.
DEFAULT_MODELS: Final[Mapping[str, Model]] = MappingProxyType(
    {
        "gpt-4o-mini": Model(128_000, 150, 600),
        "gpt-4o": Model(128_000, 2_500, 10_000),
    }
)


def cost_micros(model: Model, prompt_tokens: int, completion_tokens: int) -> int:
    """The cost of one call in micro-dollars, rounded up."""
    total = (
        prompt_tokens * model.input_micros_per_1k + completion_tokens * model.output_micros_per_1k
    )
    return -(-total // 1000)
