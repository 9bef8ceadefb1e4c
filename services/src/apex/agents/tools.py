"""Tools: their definitions, the built-in implementations, argument validation,
authorization, and the tool-call loop of one agent call.

A tool is ``{name, version (semver), description, parameters (JSON Schema draft
2020-12), permission?}``. Implementations are built into the service and deterministic
(tests assert their results): ``calculator`` (arithmetic on numbers, parsed with
:mod:`ast`, never ``eval``), ``lookup`` (a fixed table of capitals; it needs the
permission ``tools:lookup``) and ``echo``. A registered tool definition versions one of
them (:mod:`apex.agents.definitions`).

:func:`converse` is stage 4 of :class:`apex.agents.calls.AgentCaller`: it calls the
provider offering the agent's tools, runs each tool call the answer asks for, sends the
results back as ``tool`` messages, and repeats until an answer without tool calls, at
most :data:`MAX_TOOL_ROUNDS` rounds of tool calls. Before a tool runs, its arguments are
validated against its ``parameters``; a tool with a ``permission`` runs only if the
run's user holds it (otherwise the model is told ``permission denied: <permission>``
and the tool never runs). The first invalid call of a step gets the validation error
as its result; a second fails the step ``invalid_tool_arguments``.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import operator
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from apex.agents.llm import Completion, LlmError, LlmToolCall
from apex.agents.semver import SemverError, Version

__all__ = [
    "BUILTIN_TOOLS",
    "IMPLEMENTATIONS",
    "MAX_TOOL_ROUNDS",
    "Complete",
    "Conversation",
    "Tool",
    "ToolDefinitionError",
    "converse",
]

# Rounds of tool calls one agent call may make; the model asking for more fails the
# step `too_many_tool_rounds`.
MAX_TOOL_ROUNDS: Final = 8
# Invalid tool calls (arguments, or an unknown tool) a step survives: the first gets the
# error as its result, the next fails the step.
_INVALID_CALLS_ALLOWED: Final = 1


class ToolDefinitionError(ValueError):
    """A tool definition refused at registration: ``code`` is the error (422)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class _ToolFailure(Exception):
    """A tool ran and could not answer (its message is the tool's result)."""


@dataclasses.dataclass(frozen=True)
class Tool:
    """A version of a tool, as the model is offered it."""

    name: str
    version: str
    description: str
    parameters: Mapping[str, Any]
    permission: str | None = None

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Tool:
        """A tool from its JSON definition (checked with :meth:`check`)."""
        tool = cls(
            name=data["name"],
            version=data["version"],
            description=data["description"],
            parameters=data["parameters"],
            permission=data.get("permission"),
        )
        tool.check()
        return tool

    def check(self) -> None:
        """Raise :class:`ToolDefinitionError` unless the definition can be served."""
        if self.name not in IMPLEMENTATIONS:
            known = ", ".join(sorted(IMPLEMENTATIONS))
            raise ToolDefinitionError(
                "unknown_tool", f"no implementation of a tool {self.name!r}; known: {known}"
            )
        try:
            Version.parse(self.version)
        except SemverError as exc:
            raise ToolDefinitionError("invalid_version", str(exc)) from None
        try:
            Draft202012Validator.check_schema(self.parameters)
        except SchemaError as exc:
            raise ToolDefinitionError(
                "invalid_schema", f"parameters is not a JSON Schema (2020-12): {exc.message}"
            ) from None
        if self.parameters.get("type") != "object":
            raise ToolDefinitionError("invalid_schema", 'parameters must have "type": "object"')

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "parameters": dict(self.parameters),
            "permission": self.permission,
        }

    def spec(self) -> ChatCompletionToolParam:
        """The tool as the chat completions API offers it to the model."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
            },
        }

    def invalid(self, arguments: object) -> str | None:
        """Why ``arguments`` do not fit the parameters (None: they do)."""
        error = best_match(Draft202012Validator(self.parameters).iter_errors(arguments))
        return None if error is None else f"{error.message} (at {error.json_path})"


# -- the built-in implementations ----------------------------------------------------

_BINARY: Final[Mapping[type[ast.operator], Callable[[Any, Any], Any]]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: Final[Mapping[type[ast.unaryop], Callable[[Any], Any]]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
# An exponent beyond this would let a short expression take the worker's memory.
_MAX_EXPONENT: Final = 64


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        if isinstance(node.value, bool):
            raise _ToolFailure("only numbers, + - * / // % ** and parentheses are allowed")
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        result: int | float = _UNARY[type(node.op)](_evaluate(node.operand))
        return result
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise _ToolFailure(f"exponent larger than {_MAX_EXPONENT}")
        try:
            result = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise _ToolFailure("division by zero") from None
        except OverflowError:
            raise _ToolFailure("result too large") from None
        return result
    raise _ToolFailure("only numbers, + - * / // % ** and parentheses are allowed")


def calculator(arguments: Mapping[str, Any]) -> str:
    """``{"expression"}``: the value of an arithmetic expression, as Python writes it."""
    try:
        tree = ast.parse(str(arguments["expression"]), mode="eval")
    except SyntaxError:
        raise _ToolFailure("not an arithmetic expression") from None
    value = _evaluate(tree)
    if isinstance(value, complex):  # a negative number to a fractional power
        raise _ToolFailure("the result is not a real number")
    return repr(value)


CAPITALS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "france": "Paris",
        "germany": "Berlin",
        "italy": "Rome",
        "japan": "Tokyo",
        "kenya": "Nairobi",
        "peru": "Lima",
    }
)


def lookup(arguments: Mapping[str, Any]) -> str:
    """``{"key"}``: the capital of a country in :data:`CAPITALS` (case and surrounding
    spaces ignored), else ``not found: <key>``."""
    key = str(arguments["key"])
    return CAPITALS.get(key.strip().lower(), f"not found: {key}")


def echo(arguments: Mapping[str, Any]) -> str:
    """``{"text"}``: the text itself."""
    return str(arguments["text"])


IMPLEMENTATIONS: Final[Mapping[str, Callable[[Mapping[str, Any]], str]]] = MappingProxyType(
    {"calculator": calculator, "lookup": lookup, "echo": echo}
)


def _object(properties: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": dict(properties),
        "required": sorted(properties),
        "additionalProperties": False,
    }


BUILTIN_TOOLS: Final[Mapping[str, Tool]] = MappingProxyType(
    {
        "calculator": Tool(
            "calculator",
            "1.0.0",
            "Evaluates an arithmetic expression: numbers, + - * / // % ** and parentheses.",
            _object({"expression": {"type": "string", "minLength": 1, "maxLength": 200}}),
        ),
        "lookup": Tool(
            "lookup",
            "1.0.0",
            "Looks up the capital city of a country.",
            _object({"key": {"type": "string", "minLength": 1, "maxLength": 100}}),
            permission="tools:lookup",
        ),
        "echo": Tool(
            "echo",
            "1.0.0",
            "Answers the text it is given.",
            _object({"text": {"type": "string", "maxLength": 10_000}}),
        ),
    }
)


# -- the tool-call loop --------------------------------------------------------------

# One provider call: (messages, the tools offered) -> the answer; LlmError if none.
Complete = Callable[
    [list[ChatCompletionMessageParam], list[ChatCompletionToolParam]], Awaitable[Completion]
]


@dataclasses.dataclass(frozen=True)
class Conversation:
    """An agent call's provider rounds (the last one answered), and its tool calls."""

    rounds: tuple[Completion, ...]
    tool_calls: tuple[dict[str, Any], ...]

    @property
    def content(self) -> str:
        return self.rounds[-1].content

    @property
    def finish_reason(self) -> str:
        """The last round's (the quality gate refuses an answer ``length`` cut)."""
        return self.rounds[-1].finish_reason

    @property
    def prompt_tokens(self) -> int:
        return sum(r.prompt_tokens for r in self.rounds)

    @property
    def completion_tokens(self) -> int:
        return sum(r.completion_tokens for r in self.rounds)

    @property
    def attempts(self) -> int:
        return sum(r.attempts for r in self.rounds)


async def converse(
    complete: Complete,
    messages: Sequence[ChatCompletionMessageParam],
    tools: Mapping[str, Tool],
    permissions: Collection[str],
) -> Conversation:
    """Call the provider until it answers without tool calls, running the tools it asks
    for (``tools``: the agent's, by name; ``permissions``: the run user's)."""
    history = list(messages)
    specs = [tool.spec() for tool in tools.values()]
    rounds: list[Completion] = []
    records: list[dict[str, Any]] = []
    invalid = 0
    while True:
        completion = await complete(list(history), specs)
        rounds.append(completion)
        if not completion.tool_calls:
            return Conversation(tuple(rounds), tuple(records))
        if len(rounds) > MAX_TOOL_ROUNDS:
            raise LlmError(
                "too_many_tool_rounds",
                f"the model asked for tools in more than {MAX_TOOL_ROUNDS} rounds",
                completion.attempts,
            )
        history.append(_assistant(completion))
        for call in completion.tool_calls:
            record, result = _run(call, tools, permissions)
            records.append(record)
            if record["error"] in ("invalid_arguments", "unknown_tool"):
                invalid += 1
                if invalid > _INVALID_CALLS_ALLOWED:
                    raise LlmError("invalid_tool_arguments", result, completion.attempts)
            history.append({"role": "tool", "tool_call_id": call.id, "content": result})


def _assistant(completion: Completion) -> ChatCompletionMessageParam:
    """The model's answer as the history repeats it: its text and its tool calls."""
    return {
        "role": "assistant",
        "content": completion.content or None,
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in completion.tool_calls
        ],
    }


def _run(
    call: LlmToolCall, tools: Mapping[str, Tool], permissions: Collection[str]
) -> tuple[dict[str, Any], str]:
    """Run one tool call if it may run: its record (for the run's view) and the tool
    message's content (the result, or why there is none)."""
    tool = tools.get(call.name)
    record: dict[str, Any] = {
        "id": call.id,
        "name": call.name,
        "version": None if tool is None else tool.version,
        "allowed": False,
        "arguments": call.arguments,
        "result": None,
        "error": None,
    }
    if tool is None:
        known = ", ".join(sorted(tools)) or "none"
        record["error"] = "unknown_tool"
        return record, f"unknown tool: {call.name} (tools: {known})"
    if tool.permission is not None and tool.permission not in permissions:
        record["error"] = "permission_denied"
        return record, f"permission denied: {tool.permission}"
    record["allowed"] = True
    try:
        arguments = json.loads(call.arguments)
    except ValueError as exc:
        record["error"] = "invalid_arguments"
        return record, f"invalid arguments: not JSON: {exc}"
    record["arguments"] = arguments
    why = tool.invalid(arguments)
    if why is not None:
        record["error"] = "invalid_arguments"
        return record, f"invalid arguments: {why}"
    try:
        result = IMPLEMENTATIONS[tool.name](arguments)
    except _ToolFailure as exc:
        record["error"] = "tool_failed"
        result = f"error: {exc}"
    record["result"] = result
    return record, result
