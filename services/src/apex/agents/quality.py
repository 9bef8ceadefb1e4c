"""The quality gate: the rules an agent's answer must pass before it is a run's result.

The rules, each failing with a reason (a sentence the model is shown when re-asked):

- **non-empty**: the answer has a non-whitespace character;
- **not cut**: the provider did not stop at ``max_tokens`` (``finish_reason`` "length":
  the answer is truncated), the answer's length bound;
- **no refusal**: the answer's first sentence (up to the first ``.``, ``!``, ``?`` or line
  break), case-insensitively and with a right single quotation mark (U+2019) read as an
  apostrophe, holds none of :data:`REFUSALS`;
- **output_schema** (when the agent has one): the answer, whitespace-trimmed, is a JSON
  document valid against the schema (JSON Schema draft 2020-12, ``jsonschema``).

A failing answer is re-asked (``APEX_QUALITY_RETRIES`` times at most) with
:func:`reask`, a follow-up user message listing the reasons, after the answer itself in
the conversation; when every attempt failed the step is :class:`QualityRejected`
(``quality_failed``) with the last attempt's reasons and the usage of all its attempts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import jsonschema

from apex.agents.llm import LlmError
from apex.agents.runs import Usage

__all__ = ["QUALITY_FAILED", "REFUSALS", "QualityRejected", "check", "reask"]

QUALITY_FAILED: Final = "quality_failed"
# What a refusal's first sentence says (lower case).
REFUSALS: Final = (
    "i can't",
    "i cannot",
    "i can not",
    "i'm unable to",
    "i am unable to",
    "i won't",
    "as an ai",
)
_SENTENCE_END: Final = re.compile(r"[.!?\n]")


class QualityRejected(LlmError):
    """Every attempt's answer failed the gate: ``reasons`` are the last one's, ``usage``
    what all the attempts spent (billed all the same)."""

    def __init__(self, reasons: Sequence[str], usage: Usage) -> None:
        super().__init__(QUALITY_FAILED, "; ".join(reasons), usage.attempts)
        self.reasons = list(reasons)
        self.usage = usage


def check(
    answer: str, *, finish_reason: str = "stop", output_schema: Mapping[str, Any] | None = None
) -> list[str]:
    """Why ``answer`` fails the gate ([] when it passes), in the rules' order."""
    text = answer.strip()
    if not text:
        return ["the answer is empty"]
    reasons: list[str] = []
    if finish_reason == "length":
        reasons.append("the answer was cut off at max_tokens: answer more briefly")
    said = _SENTENCE_END.split(text.replace("\u2019", "'"), maxsplit=1)[0].lower()
    refusal = next((pattern for pattern in REFUSALS if pattern in said), None)
    if refusal is not None:
        reasons.append(f'the answer is a refusal ("{refusal}"): answer the request')
    if output_schema is not None:
        reasons.extend(_schema_reasons(text, output_schema))
    return reasons


def _schema_reasons(text: str, schema: Mapping[str, Any]) -> list[str]:
    try:
        document = json.loads(text)
    except ValueError:
        return ["the answer is not JSON: answer with a JSON document only"]
    validator = jsonschema.Draft202012Validator(_plain(schema))
    errors = sorted(validator.iter_errors(document), key=lambda error: list(error.path))
    return [
        f"the answer does not match its schema at /{'/'.join(str(p) for p in e.path)}: {e.message}"
        for e in errors
    ]


def _plain(value: Any) -> Any:
    """``value`` with every mapping a dict (a definition's schema is read-only)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def reask(reasons: Sequence[str]) -> str:
    """The follow-up user message asking again, with the reasons."""
    listed = "\n".join(f"- {reason}" for reason in reasons)
    return (
        "Your previous answer did not pass the quality check:\n"
        f"{listed}\n"
        "Answer the request again, fixing this."
    )
