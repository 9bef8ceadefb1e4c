"""Servers that do not work: an explicit URL that fails, a wrong password, a server the
run started that dies or freezes mid-run. Each is named once, with what the server said;
nothing is silently replaced and no secret is printed."""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from conftest import finish, inner_env, own_redis

from apex_testkit import _loop
from apex_testkit._provisioning import SERVICES
from apex_testkit._provisioning._chain import _provide
from apex_testkit._run import Run

SECRET = "s3cret-Pw"
WRONG = "wrong-Pw"

USES_REDIS = """
import pytest

@pytest.mark.L2
@pytest.mark.bvj(segment="platform", goal="x", mrr=0, scenario="001#10")
def test_redis(redis_namespace):
    client = redis_namespace.client()
    client.set(redis_namespace.prefix + "key", "value")
    assert client.get(redis_namespace.prefix + "key") == "value"
"""

USES_POSTGRES = """
import pytest

@pytest.mark.L2
@pytest.mark.bvj(segment="platform", goal="x", mrr=0, scenario="001#10")
def test_postgres(postgres_database):
    assert postgres_database
"""

# Test 0 breaks the run's PostgreSQL (kill -9 or SIGSTOP, by the pid the run recorded);
# the five after it need the server through the per-test reset.
BREAKS_POSTGRES = """
import json, os, signal
from pathlib import Path
import asyncpg, pytest
from apex_testkit import _loop

bvj = pytest.mark.bvj(segment="platform", goal="x", mrr=0, scenario="001#10")

@pytest.fixture
def clean(apex_worker, postgres_database):
    apex_worker.reset()
    return postgres_database

@pytest.mark.L2
@bvj
def test_0_break_the_server(clean, apex_run):
    pid = json.loads((apex_run.path / "resources" / "postgres.json").read_text())["pid"]
    sig = getattr(signal, os.environ["BREAK_WITH"])
    # SIGKILL kills the postmaster alone, as `kill -9 PID` does; SIGSTOP freezes the whole
    # server, its backends too (each in a session of its own), as a hung machine would.
    pids = [pid]
    if sig == signal.SIGSTOP:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    pids.append(int(stat.parent.name))
            except (OSError, ValueError):
                continue
    for each in pids:
        os.kill(each, sig)

@pytest.mark.L2
@bvj
@pytest.mark.parametrize("n", range(5))
def test_1_needs_the_server(clean, n):
    async def count():
        conn = await asyncpg.connect(clean)
        try:
            return await conn.fetchval("SELECT count(*) FROM audit_events")
        finally:
            await conn.close()
    assert _loop.run(count()) == 0
"""


def test_mask_secrets_hides_passwords_in_urls():
    from apex_testkit._masking import mask_secrets

    text = (
        "postgresql://postgres:p%40ss@127.0.0.1:5432/postgres, redis://:pw@h:6379/0, "
        "clickhouse://default@h:9000/default, http://h:80/a@b, x?user=a&password=hunter2"
    )
    assert mask_secrets(text) == (
        "postgresql://postgres:***@127.0.0.1:5432/postgres, redis://:***@h:6379/0, "
        "clickhouse://default@h:9000/default, http://h:80/a@b, x?user=a&password=***"
    )


@pytest.fixture
def protected_redis(apex_worker) -> Iterator[int]:
    """A Redis server that wants the password SECRET; its port."""
    with own_redis(apex_worker.run, "--requirepass", SECRET, password=SECRET) as port:
        yield port


@pytest.fixture(scope="module")
def protected_postgres() -> Iterator[int]:
    """A PostgreSQL server that checks passwords (scram) and knows none: every login
    with a password fails with the server's own message. Its port."""
    run = Run.create()
    try:
        provided = _provide(run, SERVICES["postgres"], ("local",))
        url = provided["url"]

        async def sql(query: str) -> str:
            conn = await asyncpg.connect(url)
            try:
                return str(await conn.fetchval(query))
            finally:
                await conn.close()

        hba = Path(_loop.run(sql("SHOW hba_file")))
        hba.write_text("host all all 127.0.0.1/32 scram-sha-256\n")
        _loop.run(sql("SELECT pg_reload_conf()"))
        yield int(url.rsplit(":", 1)[1].split("/")[0])
    finally:
        run.close()


def _servers_section(out: str) -> str:
    return out.split("apex-testkit servers", 1)[1] if "apex-testkit servers" in out else ""


def test_an_explicit_url_that_does_not_answer_is_never_replaced(test_package, inner_pytest):
    """Item 1: nothing listens at the URL the user set: the run fails and says so; it
    does not go green on a server the kit started itself."""
    project = test_package("test_s.py", USES_REDIS)
    env = inner_env(APEX_TEST_REDIS_URL="redis://127.0.0.1:1/0")
    code, out = finish(inner_pytest(str(project), env=env))
    assert code == 1, out
    assert "1 error" in out, out
    assert "- url: redis://127.0.0.1:1/0 does not answer PING: " in out, out
    assert "Connection refused" in out, out
    assert "APEX_TEST_REDIS_URL is set: the kit uses that server or none" in out, out
    assert "redis: local" not in out, out
    assert "Traceback" not in out, out


def test_a_wrong_redis_password_is_reported_masked_and_not_replaced(
    test_package, inner_pytest, protected_redis
):
    """Items 1, 2, 4: the server's own words, the password masked, no fallback, and no
    apt-get advice for a server that is plainly there."""
    project = test_package("test_s.py", USES_REDIS)
    url = f"redis://:{WRONG}@127.0.0.1:{protected_redis}/0"
    for chain in ([], ["--services", "redis=url"]):
        code, out = finish(
            inner_pytest(str(project), *chain, env=inner_env(APEX_TEST_REDIS_URL=url))
        )
        assert code == 1, out
        assert "invalid username-password pair" in out, out
        assert f"redis://:***@127.0.0.1:{protected_redis}/0" in out, out
        assert WRONG not in out, out
        assert "apt-get" not in out, out
        assert "redis: local" not in out, out


def test_passwords_are_masked_in_the_end_of_run_list(test_package, inner_pytest, protected_redis):
    """Item 2: the end-of-run server list shows the URL the run used, without its secret."""
    project = test_package("test_s.py", USES_REDIS)
    url = f"redis://:{SECRET}@127.0.0.1:{protected_redis}/0"
    code, out = finish(inner_pytest(str(project), env=inner_env(APEX_TEST_REDIS_URL=url)))
    assert code == 0, out
    assert f"redis: url redis://:***@127.0.0.1:{protected_redis}/0" in _servers_section(out), out
    assert SECRET not in out, out


def test_a_wrong_postgres_password_says_what_the_server_said(
    test_package, inner_pytest, protected_postgres
):
    """Item 4: with `postgres=url` (or the default chain and the URL set), a refused
    login is reported as the server's message, with fixes that fit that choice."""
    project = test_package("test_pg.py", USES_POSTGRES)
    url = f"postgresql://postgres:{WRONG}@127.0.0.1:{protected_postgres}/postgres"
    for chain in (["--services", "postgres=url"], []):
        env = inner_env(APEX_TEST_POSTGRES_URL=url)
        code, out = finish(inner_pytest(str(project), *chain, env=env))
        assert code == 1, out
        assert 'password authentication failed for user "postgres"' in out, out
        assert f"postgresql://postgres:***@127.0.0.1:{protected_postgres}/postgres" in out, out
        assert WRONG not in out, out
        assert "does not accept connections" not in out, out
        assert "apt-get" not in out, out
        assert "APEX_TEST_POSTGRES_URL" in out, out
        assert "postgres: local" not in out, out


def _broken_server_run(test_package, inner_pytest, signame: str) -> tuple[int, str]:
    project = test_package("test_break.py", BREAKS_POSTGRES)
    return finish(inner_pytest(str(project), env=inner_env(BREAK_WITH=signame)), timeout=150)


def _five_broken(out: str) -> bool:
    """1 passed and 5 did not: errors in setup (the reset), or failures when the server
    went away between a test's reset and its body."""
    summary = re.search(r"=+ (.*) in [0-9.]+s", out)
    counts = {
        kind.rstrip("s"): int(n)
        for n, kind in re.findall(r"(\d+) (\w+)", summary.group(1) if summary else "")
    }
    return counts.get("passed") == 1 and counts.get("failed", 0) + counts.get("error", 0) == 5


def test_a_server_killed_mid_run_is_named_once(test_package, inner_pytest):
    """Item 3: after kill -9 of the run's PostgreSQL, each test that needs it fails at
    once with one line naming it and its exit status; the first also shows its log; the
    end-of-run list says it died. No driver tracebacks."""
    code, out = _broken_server_run(test_package, inner_pytest, "SIGKILL")
    assert code == 1, out
    assert _five_broken(out), out
    died = re.findall(r"PostgreSQL \(local, pid \d+\) died: killed by signal 9 \(SIGKILL\)", out)
    assert len(died) >= 5, out
    assert len(re.findall(r"its log \(\S+\) ends:", out)) == 1, out
    assert "asyncpg" not in out, out
    assert "Traceback" not in out, out
    servers = _servers_section(out)
    assert re.search(r"postgres: local .* DIED: killed by signal 9 \(SIGKILL\)", servers), out


def test_a_frozen_server_is_named_once_and_later_tests_fail_at_once(test_package, inner_pytest):
    """Item 3: a SIGSTOPped PostgreSQL costs the first test that waits for it one short
    timeout; the verdict is kept in the run, so the tests after it fail at once."""
    code, out = _broken_server_run(test_package, inner_pytest, "SIGSTOP")
    assert code == 1, out
    assert _five_broken(out), out
    stopped = re.findall(
        r"PostgreSQL \(local, pid \d+\) is not answering: stopped \(SIGSTOP\)", out
    )
    assert len(stopped) >= 5, out
    assert len(re.findall(r"its log \(\S+\) ends:", out)) == 1, out
    assert "asyncpg" not in out, out
    assert re.search(
        r"postgres: local .* NOT ANSWERING: stopped \(SIGSTOP\)", _servers_section(out)
    )


def test_stopping_a_frozen_server_does_not_wait_out_its_grace(tmp_path: Path):
    """The run's cleanup wakes a stopped server so that it can shut down at once."""
    from apex_testkit._processes import ProcessRef

    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        process.send_signal(signal.SIGSTOP)
        ref = ProcessRef.of(process.pid)
        ref.stop(grace=20.0, sig=signal.SIGTERM)  # would wait 20 s for a stopped process
        assert process.wait(timeout=5) == -signal.SIGTERM
    finally:
        process.kill()
        process.wait()
