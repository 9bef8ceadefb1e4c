"""The stack manifest: a TOML file naming each running service's URL (an L4 target)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

__all__ = ["render_manifest", "write_manifest"]


def render_manifest(
    services: Mapping[str, str], admin_token: str | None, *, name: str = "local-stack"
) -> str:
    """The manifest text for ``services`` (name -> base URL)."""
    lines = [f"name = {_toml_string(name)}", ""]
    for service, url in services.items():
        lines += [f"[services.{service}]", f"url = {_toml_string(url)}", ""]
    lines.append("[credentials]")
    if admin_token is not None:
        lines.append(f"admin_token = {_toml_string(admin_token)}")
    return "\n".join(lines) + "\n"


def write_manifest(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (readers see the old or the whole new file), 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        # mkstemp creates the file 0600: right for a file holding the admin token.
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _toml_string(value: str) -> str:
    """A TOML basic string."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(ch if ch >= " " and ch != "\x7f" else f"\\u{ord(ch):04x}" for ch in escaped)
    return f'"{escaped}"'
