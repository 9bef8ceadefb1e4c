"""The platform's schema CLI, run as an operator would: `python -m apex.data <command>`.

Public: `data_cli(dsn, *arguments, **settings)` -> `CliResult(code, output)`, and
`migrate(dsn)` (migrate, asserting success).
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass

__all__ = ["CLI_TIMEOUT", "CliResult", "data_cli", "migrate"]

CLI_TIMEOUT = 60.0


@dataclass(frozen=True)
class CliResult:
    """How `python -m apex.data` ended: its exit code and its output (stdout + stderr)."""

    code: int
    output: str


async def data_cli(dsn: str, *arguments: str, **settings: str) -> CliResult:
    """`python -m apex.data *arguments` on the database `dsn`, with these APEX_* settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "apex.data",
        *arguments,
        env={**clean, **settings, "APEX_DATABASE_URL": dsn},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(
            f"python -m apex.data {' '.join(arguments)} ran over {CLI_TIMEOUT:g} s"
        ) from None
    assert process.returncode is not None
    return CliResult(process.returncode, output.decode(errors="replace"))


async def migrate(dsn: str) -> None:
    """Bring the database at `dsn` to the platform's newest schema with its own CLI."""
    result = await data_cli(dsn, "migrate")
    assert result.code == 0, result.output
