"""``python -m apex.billing [--host H] [--port P] [--fd N]`` serves the billing service;
``python -m apex.billing migrate [--to N] | rollback --to N | status`` manages the
platform's schema at APEX_DATABASE_URL, as ``python -m apex.data`` does (apex.billing's
tables are among its migrations)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from apex.common import serve

_SCHEMA_COMMANDS = ("migrate", "rollback", "status")


def main(argv: Sequence[str] | None = None) -> int:
    """Serve, or run a schema command; return the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] and arguments[0] in _SCHEMA_COMMANDS:
        from apex.data.__main__ import main as data_main  # noqa: PLC0415 - the CLI on demand

        return data_main(arguments)
    if arguments[:1] in (["-h"], ["--help"]):
        parser = argparse.ArgumentParser(prog="python -m apex.billing", description=__doc__)
        parser.parse_args(arguments)
    from apex.billing import create_app, load_settings  # noqa: PLC0415 - FastAPI on demand

    return serve.main("billing", create_app, arguments, load_settings=load_settings)


if __name__ == "__main__":
    sys.exit(main())
