"""``python -m apex.agents [--host H] [--port P] [--fd N]`` serves the agents service (its
lifespan runs APEX_AGENTS_WORKERS worker tasks); ``python -m apex.agents worker`` runs
worker tasks alone (max(APEX_AGENTS_WORKERS, 1)) until SIGTERM or SIGINT; both reload
APEX_AGENTS_CONFIG on SIGHUP and, on SIGTERM, persist their runs in flight as
``interrupted`` (resumed by the next worker);
``python -m apex.agents migrate [--to N] | rollback --to N | status`` manages the
platform's schema at APEX_DATABASE_URL, as ``python -m apex.data`` does (apex.agents'
tables are among its migrations)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import signal
import sys
from collections.abc import Sequence

from apex.common import serve
from apex.common.config import ConfigError
from apex.common.logging import configure_logging

_SCHEMA_COMMANDS = ("migrate", "rollback", "status")


def _worker_main() -> int:
    from apex.agents import load_settings  # noqa: PLC0415 - the service on demand
    from apex.agents.config import reload_on_signal  # noqa: PLC0415
    from apex.agents.service import open_service  # noqa: PLC0415

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"apex.agents: configuration error: {exc}", file=sys.stderr)
        return serve.EXIT_CONFIG_ERROR
    configure_logging(settings.log_level)

    async def work() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with open_service(settings, workers=max(settings.workers, 1)) as service:
            loop.add_signal_handler(signal.SIGHUP, reload_on_signal, service.config)
            await stop.wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(work())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Serve, run workers, or run a schema command; return the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["worker"]:
        if arguments[1:]:
            print("apex.agents: `worker` takes no arguments", file=sys.stderr)
            return serve.EXIT_CONFIG_ERROR
        return _worker_main()
    if arguments[:1] and arguments[0] in _SCHEMA_COMMANDS:
        from apex.data.__main__ import main as data_main  # noqa: PLC0415 - the CLI on demand

        return data_main(arguments)
    if arguments[:1] in (["-h"], ["--help"]):
        parser = argparse.ArgumentParser(prog="python -m apex.agents", description=__doc__)
        parser.parse_args(arguments)
    from apex.agents import create_app, load_settings  # noqa: PLC0415 - FastAPI on demand

    app = functools.partial(create_app, reload_on_sighup=True)
    return serve.main("agents", app, arguments, load_settings=load_settings)


if __name__ == "__main__":
    sys.exit(main())
