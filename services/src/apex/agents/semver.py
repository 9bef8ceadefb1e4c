"""Semantic versions and the ranges agent definitions name their tools with.

A version is strict SemVer 2.0.0's core, ``MAJOR.MINOR.PATCH`` (digits, no leading
zeros; no pre-release or build part). A range is one of:

- ``^1.2.3`` / ``^1.2`` / ``^1``: the same leftmost non-zero part (npm's caret):
  ``^1.2.3`` is ``>=1.2.3,<2.0.0``, ``^0.2.3`` is ``>=0.2.3,<0.3.0``, ``^0.0.3`` is
  ``>=0.0.3,<0.0.4``;
- ``~1.2.3`` / ``~1.2``: the same minor (``>=1.2.3,<1.3.0``); ``~1``: the same major;
- ``1.2.3`` or ``=1.2.3``: exactly that version;
- comparators joined by commas, all of which must hold: ``>=1.0,<2.0`` (each of ``>=``,
  ``>``, ``<=``, ``<``, ``=``, ``!=``); a missing minor or patch is 0.

Anything else is a :class:`SemverError`.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Callable
from typing import Final

__all__ = ["Range", "SemverError", "Version"]

_VERSION: Final = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")
_PARTIAL: Final = re.compile(r"(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?(?:\.(0|[1-9]\d*))?")
_COMPARATOR: Final = re.compile(r"(>=|<=|>|<|!=|=)?\s*(.+)")


class SemverError(ValueError):
    """A malformed version or range."""


@dataclasses.dataclass(frozen=True, order=True)
class Version:
    """A ``MAJOR.MINOR.PATCH`` version; ordered as SemVer orders them."""

    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> Version:
        match = _VERSION.fullmatch(text)
        if match is None:
            raise SemverError(f"{text!r} is not a version MAJOR.MINOR.PATCH")
        return cls(*(int(part) for part in match.groups()))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


_OPERATORS: Final[dict[str, Callable[[Version, Version], bool]]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "=": operator.eq,
    "!=": operator.ne,
}


def _partial(text: str, whole: str) -> tuple[Version, int]:
    """The version a range part names (missing parts 0) and how many parts it gave."""
    match = _PARTIAL.fullmatch(text.strip())
    if match is None:
        raise SemverError(f"range {whole!r}: {text.strip()!r} is not a version")
    parts = [int(part) for part in match.groups() if part is not None]
    return Version(*(parts + [0, 0][: 3 - len(parts)])), len(parts)


@dataclasses.dataclass(frozen=True)
class Range:
    """A set of versions: every comparator ``(operator, version)`` holds."""

    text: str
    comparators: tuple[tuple[str, Version], ...]

    @classmethod
    def parse(cls, text: str) -> Range:
        stripped = text.strip()
        if not stripped:
            raise SemverError("an empty range")
        if stripped[0] == "^":
            return cls(text, _caret(*_partial(stripped[1:], text)))
        if stripped[0] == "~":
            low, given = _partial(stripped[1:], text)
            high = (
                Version(low.major + 1, 0, 0) if given == 1 else Version(low.major, low.minor + 1, 0)
            )
            return cls(text, ((">=", low), ("<", high)))
        comparators = []
        for part in stripped.split(","):
            match = _COMPARATOR.fullmatch(part.strip())
            if match is None or not part.strip():
                raise SemverError(f"range {text!r}: an empty comparator")
            op, version = match.group(1) or "=", match.group(2)
            comparators.append((op, _partial(version, text)[0]))
        return cls(text, tuple(comparators))

    def allows(self, version: Version) -> bool:
        """Whether ``version`` is in the range."""
        return all(_OPERATORS[op](version, bound) for op, bound in self.comparators)

    def __str__(self) -> str:
        return self.text


def _caret(low: Version, given: int) -> tuple[tuple[str, Version], ...]:
    """``^low``: up to the next change of its leftmost non-zero part (of those given)."""
    if low.major > 0 or given == 1:
        high = Version(low.major + 1, 0, 0)
    elif low.minor > 0 or given == 2:
        high = Version(0, low.minor + 1, 0)
    else:
        high = Version(0, 0, low.patch + 1)
    return ((">=", low), ("<", high))
