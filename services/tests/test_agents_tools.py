"""apex.agents.semver and apex.agents.tools' pure parts: versions, ranges, the built-in
tools and their definitions' checks (notes-agents.md § Tools and definitions)."""

from __future__ import annotations

from typing import Any

import pytest

from apex.agents.semver import Range, SemverError, Version
from apex.agents.tools import BUILTIN_TOOLS, IMPLEMENTATIONS, Tool, ToolDefinitionError


@pytest.mark.parametrize(
    ("text", "inside", "outside"),
    [
        ("^1.2", ["1.2.0", "1.9.9"], ["1.1.9", "2.0.0"]),
        ("^1.2.3", ["1.2.3", "1.99.0"], ["1.2.2", "2.0.0"]),
        ("^0.2.3", ["0.2.3", "0.2.9"], ["0.3.0", "0.2.2"]),
        ("^0.0.3", ["0.0.3"], ["0.0.4", "0.1.0"]),
        ("^0", ["0.0.0", "0.9.9"], ["1.0.0"]),
        ("~1.2.3", ["1.2.3", "1.2.9"], ["1.3.0", "1.2.2"]),
        ("~1.2", ["1.2.0", "1.2.9"], ["1.3.0"]),
        ("~1", ["1.0.0", "1.9.0"], ["2.0.0"]),
        (">=1.0,<2.0", ["1.0.0", "1.9.9"], ["0.9.9", "2.0.0"]),
        ("1.2.3", ["1.2.3"], ["1.2.4"]),
        ("=1.2.3", ["1.2.3"], ["1.2.2"]),
        ("!=1.0.0", ["1.0.1"], ["1.0.0"]),
    ],
)
def test_ranges(text: str, inside: list[str], outside: list[str]) -> None:
    allowed = Range.parse(text)
    assert all(allowed.allows(Version.parse(v)) for v in inside)
    assert not any(allowed.allows(Version.parse(v)) for v in outside)


@pytest.mark.parametrize("text", ["", "^", "1.2.x", ">=1.0,", "^2.0 || ^1.0", "01.2.3", "abc"])
def test_malformed_ranges_are_refused(text: str) -> None:
    with pytest.raises(SemverError):
        Range.parse(text)


@pytest.mark.parametrize("text", ["1.2", "1.2.3-beta", "v1.0.0", "01.0.0", "1.0.0.0"])
def test_versions_are_strict(text: str) -> None:
    with pytest.raises(SemverError):
        Version.parse(text)


def test_versions_order_numerically() -> None:
    assert Version.parse("1.10.0") > Version.parse("1.9.9")


@pytest.mark.parametrize(
    ("expression", "result"),
    [
        ("(2 + 3) * 4 - 7 / 2", "16.5"),
        ("4 / 2", "2.0"),
        ("-3 ** 2", "-9"),
        ("7 // 2 + 7 % 2", "4"),
        ("1 / 0", None),
        ("2 ** 65", None),
        ("__import__('os')", None),
        ("True + 1", None),
        ("1 +", None),
    ],
)
def test_calculator(expression: str, result: str | None) -> None:
    tool = IMPLEMENTATIONS["calculator"]
    if result is not None:
        assert tool({"expression": expression}) == result
    else:
        with pytest.raises(Exception, match=r".") as caught:
            tool({"expression": expression})
        assert type(caught.value).__name__ == "_ToolFailure"


def test_lookup_and_echo() -> None:
    assert IMPLEMENTATIONS["lookup"]({"key": " Kenya "}) == "Nairobi"
    assert IMPLEMENTATIONS["lookup"]({"key": "Atlantis"}) == "not found: Atlantis"
    assert IMPLEMENTATIONS["echo"]({"text": "hi"}) == "hi"


def test_builtin_definitions_are_valid_and_validate_arguments() -> None:
    for tool in BUILTIN_TOOLS.values():
        tool.check()
    calculator = BUILTIN_TOOLS["calculator"]
    assert calculator.invalid({"expression": "1"}) is None
    assert calculator.invalid({"expression": 1}) == "1 is not of type 'string' (at $.expression)"
    assert calculator.invalid({"expression": "1", "x": 2}) is not None
    assert BUILTIN_TOOLS["lookup"].permission == "tools:lookup"


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"name": "shell"}, "unknown_tool"),
        ({"version": "1.0"}, "invalid_version"),
        ({"parameters": {"type": "objct"}}, "invalid_schema"),
        ({"parameters": {"type": "string"}}, "invalid_schema"),
    ],
)
def test_tool_definitions_are_checked(fields: dict[str, Any], code: str) -> None:
    data = {**BUILTIN_TOOLS["echo"].to_json(), "version": "1.1.0", **fields}
    with pytest.raises(ToolDefinitionError) as refused:
        Tool.of(data)
    assert refused.value.code == code
