"""apex.auth: API keys, JWT access and refresh tokens, sessions, rate limits, audit.

The service contract (apex.topology): `load_settings(env)`, then `create_app(settings)`
gives the ASGI app; `await reset_memory(app)` makes a running app forget what it holds in
memory (for test harnesses that reuse it); `python -m apex.auth` runs it as a process.
"""

from collections.abc import Mapping

from apex.auth.app import create_app, reset_memory
from apex.common.config import Settings


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """The service's settings from `env` (default: the process environment)."""
    return Settings.from_env(env)


__all__ = ["create_app", "load_settings", "reset_memory"]
