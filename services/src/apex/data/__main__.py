"""``python -m apex.data [--host H] [--port P] [--fd N]`` serves the data service;
``python -m apex.data migrate [--to N] | rollback --to N | status`` manages the schema at
APEX_DATABASE_URL; ``backup DIR`` / ``restore DIR`` back up and restore PostgreSQL and,
when APEX_CLICKHOUSE_URL is set, ClickHouse (:mod:`apex.data.backup`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

import asyncpg

from apex.common import serve
from apex.common.config import ConfigError, Settings
from apex.common.settings import Env
from apex.data.migrations import MigrationError, migrate, rollback, status

_COMMANDS = ("migrate", "rollback", "status", "backup", "restore")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m apex.data",
        description=(
            "Manage the PostgreSQL schema at APEX_DATABASE_URL; without a command, serve "
            "the data service ([--host H] [--port P] [--fd N])."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("migrate", help="apply pending migrations")
    up.add_argument(
        "--to", type=int, default=None, metavar="N", help="stop at version N (default: newest)"
    )
    down = commands.add_parser("rollback", help="revert migrations newer than a version")
    down.add_argument(
        "--to", type=int, required=True, metavar="N", help="revert every version above N (0: all)"
    )
    commands.add_parser("status", help="list migrations and whether each is applied")
    save = commands.add_parser(
        "backup", help="back up PostgreSQL (and ClickHouse, if APEX_CLICKHOUSE_URL is set)"
    )
    save.add_argument("directory", help="a new or empty folder for the backup")
    load = commands.add_parser(
        "restore", help="restore a backup into an empty database (and empty ClickHouse tables)"
    )
    load.add_argument("directory", help="the folder `backup` wrote")
    return parser


class _BackupFailed(Exception):
    """A backup or restore failed (BackupError or ClickHouseError, whose modules are
    imported only by these commands)."""


async def _backup(args: argparse.Namespace, dsn: str, clickhouse_url: str | None) -> None:
    from apex.data import backup  # noqa: PLC0415 - the ClickHouse driver on demand
    from apex.data.clickhouse import ClickHouse, ClickHouseError  # noqa: PLC0415

    clickhouse = ClickHouse.from_url(clickhouse_url) if clickhouse_url else None
    try:
        if args.command == "backup":
            manifest = await backup.create_backup(args.directory, dsn, clickhouse)
            verb = "backed up"
        else:
            manifest = await backup.restore_backup(args.directory, dsn, clickhouse)
            verb = "restored"
    except (backup.BackupError, ClickHouseError) as exc:
        raise _BackupFailed(str(exc)) from exc
    finally:
        if clickhouse is not None:
            await clickhouse.close()
    tables = manifest.clickhouse
    stores = (
        "PostgreSQL"
        if tables is None
        else (
            "PostgreSQL and ClickHouse ("
            + ", ".join(f"{t.name}: {t.rows} rows" for t in tables)
            + ")"
        )
    )
    print(f"{verb} {stores} ({args.directory})")


async def _run(args: argparse.Namespace, settings: Settings, lock_timeout: float) -> None:
    dsn = settings.require("database_url", service="python -m apex.data")
    if args.command in ("backup", "restore"):
        await _backup(args, dsn, settings.clickhouse_url)
    elif args.command == "migrate":
        versions = await migrate(dsn, args.to, lock_timeout=lock_timeout)
        print(
            f"applied {_versions(versions)}"
            if versions
            else "nothing to apply: the schema is up to date"
        )
    elif args.command == "rollback":
        versions = await rollback(dsn, args.to, lock_timeout=lock_timeout)
        print(
            f"reverted {_versions(versions)}"
            if versions
            else f"nothing to revert above version {args.to}"
        )
    else:
        for version, name, applied in await status(dsn):
            print(f"{version:04d}  {'applied' if applied else 'pending':7}  {name}")


def _versions(versions: Sequence[int]) -> str:
    return ", ".join(f"{v:04d}" for v in versions)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve, or run a schema or backup command; return the exit code (2: configuration,
    1: migration, backup or connection error, 3: the service could not start)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] not in (*_COMMANDS, "-h", "--help"):
        # No subcommand: serve (the options are serve's --host/--port/--fd).
        from apex.data import create_app, load_settings  # noqa: PLC0415 - FastAPI on demand

        return serve.main("data", create_app, arguments, load_settings=load_settings)
    args = _parser().parse_args(arguments)
    try:
        settings = Settings.from_env()
        settings.require("database_url", service="python -m apex.data")
        lock_timeout = Env(os.environ).number("APEX_MIGRATION_LOCK_TIMEOUT", 5.0, unit="seconds")
    except ConfigError as exc:
        print(f"apex.data: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_run(args, settings, lock_timeout))
    except (MigrationError, _BackupFailed) as exc:
        print(f"apex.data: {exc}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(
            f"apex.data: cannot reach PostgreSQL at APEX_DATABASE_URL: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
