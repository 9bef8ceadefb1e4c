"""Affected tests (`nox -s affected`): a map of which L2 test ran which line, recorded with
per-test coverage contexts (`contexts`, `coverage_map`), and the tests a change since a
base selects from it (`selection`, `changes`). This package's top level needs no
third-party module (the noxfile imports it); `coverage_map` and `contexts` need coverage."""

from __future__ import annotations

from tools.affected.changes import FileChange, default_base, parse_diff
from tools.affected.selection import Selection, affected_tests, load_map, select

__all__ = [
    "FileChange",
    "Selection",
    "affected_tests",
    "default_base",
    "load_map",
    "parse_diff",
    "select",
]
