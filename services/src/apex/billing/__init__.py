"""apex.billing: plans, subscriptions, webhooks and the ledger, as a service (issue 13;
contract-billing.md).

The service contract (apex.topology): ``load_settings(env)``, then ``create_app(settings)``
gives the ASGI app; ``python -m apex.billing`` serves it, ``python -m apex.billing
migrate|rollback|status`` manages the platform's schema (its tables are in apex.data's
migrations). Modules: ``settings``, ``plans`` (the tier table), ``payments`` (the provider
through the official ``stripe`` SDK), ``store``, ``subscriptions`` (the lifecycle),
``webhooks``, ``ledger`` (double entry), ``recognition``, ``metering`` (usage from
apex.data's ClickHouse, priced), ``usage_invoices`` (a period's usage on the provider's
invoices, corrected when usage arrives late), ``schedule`` (the periodic invoicing and
recognition), ``entitlements``, ``metrics``, ``service``, ``routes``, ``app``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from apex.billing.plans import Plan
from apex.billing.settings import BillingSettings

if TYPE_CHECKING:
    from apex.billing.app import create_app

# Imported on first use: `python -m apex.billing migrate` needs none of the service.
_EXPORTS: dict[str, str] = {"create_app": "apex.billing.app"}


def load_settings(env: Mapping[str, str] | None = None) -> BillingSettings:
    """The service's settings from `env` (default: the process environment)."""
    return BillingSettings.from_env(env)


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'apex.billing' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = ["BillingSettings", "Plan", "create_app", "load_settings"]
