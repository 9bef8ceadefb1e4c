"""The L4 target: a TOML file naming a deployed platform's URLs and credentials.

```toml
name = "staging"
[services.auth]
url = "https://auth.staging.example.com"
[credentials]
admin_token_env = "APEX_STAGING_ADMIN_TOKEN"   # or admin_token = "..." (local stacks)
```
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SCHEMES = ("http", "https", "ws", "wss")


class TargetError(ValueError):
    """The target file is missing, malformed or lacks what a test needs."""


@dataclass(frozen=True)
class Target:
    """A deployed platform the L4 tests run against."""

    path: Path
    name: str
    services: dict[str, str] = field(default_factory=dict)
    admin_token: str | None = None

    def url(self, service: str) -> str:
        """The base URL of `service`, or a TargetError saying which key to add."""
        try:
            return self.services[service]
        except KeyError:
            known = ", ".join(sorted(self.services)) or "none"
            raise TargetError(
                f"target {self.path} has no [services.{service}] url (it names: {known})"
            ) from None

    def require_admin_token(self) -> str:
        if not self.admin_token:
            raise TargetError(
                f"target {self.path} has no [credentials] admin_token or admin_token_env; "
                "the tests create their own users and API keys through the admin API"
            )
        return self.admin_token


def load_target(path: str | os.PathLike[str]) -> Target:
    """Read and check a target file; every problem is a TargetError naming file and key."""
    file = Path(path)
    if not file.is_file():
        raise TargetError(f"target file {file} does not exist (or is not a file)")
    try:
        data = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"target file {file} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise TargetError(f"target file {file} is not UTF-8 text") from None
    services = data.get("services")
    if not isinstance(services, dict) or not services:
        raise TargetError(f"target file {file} needs a [services.<name>] table with a url")
    urls = {name: _checked_url(file, name, table) for name, table in services.items()}
    return Target(
        path=file,
        name=str(data.get("name", file.stem)),
        services=urls,
        admin_token=_admin_token(file, data.get("credentials", {})),
    )


def _checked_url(file: Path, name: str, table: Any) -> str:
    url = table.get("url") if isinstance(table, dict) else None
    if not isinstance(url, str):
        raise TargetError(f'target file {file}: [services.{name}] needs url = "..."')
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise TargetError(
            f"target file {file}: [services.{name}] url {url!r} is not an "
            f"{'/'.join(SCHEMES)} URL with a host"
        )
    return url.rstrip("/")


def _admin_token(file: Path, credentials: Any) -> str | None:
    if not isinstance(credentials, dict):
        raise TargetError(f"target file {file}: [credentials] must be a table")
    if "admin_token_env" in credentials:
        name = str(credentials["admin_token_env"])
        value = os.environ.get(name)
        if not value:
            raise TargetError(
                f"target file {file} reads the admin token from ${name}, which is unset"
            )
        return value
    token = credentials.get("admin_token")
    return str(token) if token else None
