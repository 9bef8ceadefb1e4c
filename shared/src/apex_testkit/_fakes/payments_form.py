"""Stripe's request encoding: form bodies with bracketed keys, decoded to nested values.

Stripe's clients send `metadata[plan]=pro`, `items[0][price]=price_1` and `expand[]=x`
(application/x-www-form-urlencoded, RFC 1866 with Rack-style brackets). :func:`decode`
turns such pairs into dicts and lists; a dict whose keys are all indices becomes a list
in index order. :func:`canonical` is the decoded parameters as one string, so two requests
with one idempotency key can be compared by what they ask for.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["FormError", "canonical", "decode"]

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


class FormError(ValueError):
    """A key the encoding cannot hold (unbalanced brackets, a name used two ways)."""


def decode(body: str) -> dict[str, Any]:
    """The nested parameters of a form body (or a query string)."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        match = _KEY.match(key)
        if match is None:
            raise FormError(f"Invalid parameter name: {key!r}")
        parts = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        _put(root, parts, value, key)
    return _listify(root)  # type: ignore[no-any-return]


def _put(node: dict[str, Any], parts: list[str], value: str, key: str) -> None:
    for part in parts[:-1]:
        child = node.setdefault(part if part != "" else str(len(node)), {})
        if not isinstance(child, dict):
            raise FormError(f"Invalid parameter: {key!r} mixes a value and a hash")
        node = child
    last = parts[-1] if parts[-1] != "" else str(len(node))
    if isinstance(node.get(last), dict):
        raise FormError(f"Invalid parameter: {key!r} mixes a value and a hash")
    node[last] = value


def _listify(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    converted = {key: _listify(item) for key, item in value.items()}
    if converted and all(key.isdigit() for key in converted):
        return [converted[key] for key in sorted(converted, key=int)]
    return converted


def canonical(params: dict[str, Any]) -> str:
    """The parameters as one comparable string (key order does not matter)."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"))
