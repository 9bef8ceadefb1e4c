"""The `apex-testkit` command: the local stack, and housekeeping."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from apex_testkit._masking import mask_secrets
from apex_testkit._provisioning import PROVIDERS, SERVICES, ServiceUnavailable, parse_services
from apex_testkit._provisioning._chain import Unavailable
from apex_testkit._run import Run, RunDirError, base_dir, sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="apex-testkit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    stack = commands.add_parser(
        "stack",
        help="run the whole platform locally; with a COMMAND, run it against the stack",
        description="Start real servers and every platform service as processes, write an "
        "L4 target file, then run COMMAND (after --) or wait for Ctrl-C.",
    )
    stack.add_argument("--target-out", type=Path, help="write the L4 target file here too")
    stack.add_argument(
        "--services",
        default=os.environ.get("APEX_TEST_SERVICES", ""),
        help="provider chain per service, as pytest --services (env APEX_TEST_SERVICES)",
    )
    stack.add_argument(
        "--check-leftovers",
        action="store_true",
        help="after COMMAND, fail (exit 1) if rows of a test namespace (users under .invalid, "
        "their keys, identities, grants, teams named <domain>/...) are left in the database",
    )
    stack.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")

    commands.add_parser("sweep", help="remove what dead test runs left behind")
    commands.add_parser("doctor", help="say which provider would supply each service here")

    args = parser.parse_args(argv)
    if args.command == "stack":
        return _stack(args)
    try:
        if args.command == "sweep":
            swept = sweep(base_dir())
            print(f"swept {len(swept)} dead run(s) in {base_dir()}")
            return 0
        return _doctor()
    except RunDirError as exc:
        print(f"apex-testkit {args.command}: {exc}", file=sys.stderr)
        return 2


def _stack(args: argparse.Namespace) -> int:
    from apex_testkit._stack import run_stack  # noqa: PLC0415 - imports the SUT wiring

    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    try:
        chains = parse_services(args.services)
        return run_stack(
            command,
            target_out=args.target_out,
            chains=chains,
            check_leftovers=args.check_leftovers,
        )
    except (ValueError, ServiceUnavailable, RuntimeError) as exc:
        print(f"apex-testkit stack: {mask_secrets(str(exc))}", file=sys.stderr)
        return 2


def _doctor() -> int:
    """Try each provider of each service in a throwaway run and report."""
    run = Run.create()
    try:
        for service in SERVICES.values():
            print(f"{service.title}:")
            for provider in PROVIDERS:
                try:
                    server = service.providers[provider](run)
                except (Unavailable, RunDirError, OSError) as exc:
                    print(f"  {provider:9} no: {mask_secrets(str(exc).splitlines()[0])}")
                else:
                    print(f"  {provider:9} yes: {mask_secrets(server.version or server.url)}")
    finally:
        run.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
