"""Write a placeholder L4 target naming every service of the platform (apex.topology).

`nox -s collect` collects each package's L4 tests against it: collection needs a target
file, and nothing in it is contacted (port 9 of the loopback, the discard port).

    python tools/collect_target.py OUT.toml
"""

from __future__ import annotations

import sys
from pathlib import Path

from apex.topology import SERVICES

PLACEHOLDER_HOST = "127.0.0.1:9"


def render() -> str:
    """The target file's text: one [services.<name>] table per platform service."""
    lines = ['name = "collect-only"']
    for name, service in SERVICES.items():
        lines += ["", f"[services.{name}]", f'url = "{service.protocol}://{PLACEHOLDER_HOST}"']
    lines += ["", "[credentials]", 'admin_token = "collect-only"']
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    Path(argv[0]).write_text(render(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
