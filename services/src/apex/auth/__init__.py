"""apex.auth: API keys, JWT access and refresh tokens, sessions, rate limits, audit."""

from apex.auth.app import create_app

__all__ = ["create_app"]
