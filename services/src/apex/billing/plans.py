"""The plan table: what each tier costs and allows (contract-billing.md § Plans).

Prices are integers of minor units (USD cents) a month; limits are whole numbers.
``APEX_PLANS`` replaces the table whole (JSON ``{plan: {price, requests_per_minute,
tokens_per_day, seats, ws_connections}}``); ``free`` must be in it and cost 0.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from apex.common.settings import ConfigError

__all__ = ["CURRENCY", "DEFAULT_PLANS", "FREE", "LIMITS", "Plan", "parse_plans"]

FREE: Final = "free"
CURRENCY: Final = "usd"
# The limits a plan sets, as the other services read them (entitlements).
LIMITS: Final = ("requests_per_minute", "tokens_per_day", "seats", "ws_connections")


@dataclasses.dataclass(frozen=True)
class Plan:
    """One tier: its monthly price (cents) and its limits."""

    name: str
    price: int
    requests_per_minute: int
    tokens_per_day: int
    seats: int
    ws_connections: int

    def limits(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in LIMITS}

    def view(self) -> dict[str, Any]:
        return {
            "plan": self.name,
            "price": {"amount": self.price, "currency": CURRENCY},
            "interval": "month",
            "limits": self.limits(),
        }


DEFAULT_PLANS: Final[Mapping[str, Plan]] = MappingProxyType(
    {
        "free": Plan("free", 0, 60, 100_000, 1, 2),
        "early": Plan("early", 2_900, 600, 2_000_000, 5, 20),
        "mid": Plan("mid", 9_900, 3_000, 20_000_000, 25, 200),
        "enterprise": Plan("enterprise", 49_900, 30_000, 500_000_000, 1_000, 5_000),
    }
)


def parse_plans(text: str, variable: str) -> Mapping[str, Plan]:
    """The plan table of ``variable``'s JSON; ConfigError naming what is wrong."""
    try:
        table = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{variable} is not valid JSON: {exc}") from None
    if not isinstance(table, dict) or FREE not in table:
        raise ConfigError(f"{variable} must be a JSON object of plans, `free` among them")
    fields = ("price", *LIMITS)
    plans: dict[str, Plan] = {}
    for name, entry in table.items():
        if not isinstance(entry, dict) or set(entry) != set(fields):
            raise ConfigError(f"{variable}: plan {name!r} needs exactly {', '.join(fields)}")
        values = [entry[field] for field in fields]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise ConfigError(f"{variable}: plan {name!r}: each value is a whole number >= 0")
        plans[name] = Plan(name, *values)
    if plans[FREE].price != 0:
        raise ConfigError(f"{variable}: plan `free` must cost 0")
    return MappingProxyType(plans)
