"""003 configuration validation: `python -m apex.data` refuses a bad setting at start.

The rule under test (contract-data.md, Settings): a bad value is a configuration error
naming the variable; the process exits 2 before it serves, without echoing a secret.
The process is started with placeholder servers: it must fail on the setting, before
connecting to anything.
"""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

CONFIG = pytest.mark.bvj(
    segment="platform", goal="A misconfigured data service fails at once and says why",
    mrr=4000, scenario="003:configuration validation",
)  # fmt: skip
pytestmark = [CONFIG, pytest.mark.L3]

EXIT_CONFIG_ERROR = 2
PLACEHOLDERS = {
    "APEX_DATABASE_URL": "postgresql://apex:hunter2@127.0.0.1:9/apex",
    "APEX_REDIS_URL": "redis://127.0.0.1:9/0",
    "APEX_AUTH_URL": "http://127.0.0.1:9",
}


async def _start(env: dict[str, str]) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "apex.data",
        "--port",
        "0",
        env={**clean, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError("python -m apex.data kept running with a bad setting") from None
    assert process.returncode is not None
    return process.returncode, stderr.decode(errors="replace")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("APEX_DB_POOL_SIZE", "0"),
        ("APEX_DB_POOL_TIMEOUT", "soon"),
        ("APEX_DB_STATEMENT_TIMEOUT", "-1"),
        ("APEX_DB_RETRY_BACKOFF", "2/1"),
        ("APEX_DATABASE_REPLICA_URL", "mysql://replica/x"),
        ("APEX_CACHE_REDIS_URLS", "redis://a/0,,redis://b/0"),
        ("APEX_REPLICA_MAX_LAG_BYTES", "lots"),
    ],
)
async def test_a_bad_setting_stops_the_process_naming_it(variable: str, value: str) -> None:
    code, stderr = await _start({**PLACEHOLDERS, variable: value})
    assert code == EXIT_CONFIG_ERROR, stderr
    assert variable in stderr
    assert "hunter2" not in stderr


@pytest.mark.parametrize("missing", sorted(PLACEHOLDERS))
async def test_a_missing_setting_stops_the_process_naming_it(missing: str) -> None:
    env = {k: v for k, v in PLACEHOLDERS.items() if k != missing}
    code, stderr = await _start(env)
    assert code == EXIT_CONFIG_ERROR, stderr
    assert f"{missing} is required by apex.data" in stderr
