"""ClickHouse: one server per run, a database per worker."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from apex_testkit._provisioning import _docker
from apex_testkit._provisioning._binaries import find_binary, start_server
from apex_testkit._provisioning._chain import (
    CONNECT_TIMEOUT,
    RESET_TIMEOUT,
    Server,
    Service,
    Unavailable,
    check_external,
    safe_identifier,
)
from apex_testkit._run import Run, register_cleaner

if TYPE_CHECKING:
    from clickhouse_driver import Client

# `<yandex>` is the root element 18.x knows; current releases still accept it.
_CONFIG = """<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><console>1</console></logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>{port}</tcp_port>
    <path>{dir}/data/</path>
    <tmp_path>{dir}/tmp/</tmp_path>
    <user_files_path>{dir}/user_files/</user_files_path>
    <format_schema_path>{dir}/format_schemas/</format_schema_path>
    <users_config>{dir}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>67108864</mark_cache_size>
    <max_concurrent_queries>200</max_concurrent_queries>
    <uncompressed_cache_size>67108864</uncompressed_cache_size>
</yandex>
"""
# max_execution_time bounds every query, so SIGTERM (which waits for running queries)
# can never hang a run's teardown for long.
_USERS = """<?xml version="1.0"?>
<yandex>
    <profiles><default><max_execution_time>60</max_execution_time></default></profiles>
    <users><default>
        <password></password>
        <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
        <profile>default</profile><quota>default</quota>
    </default></users>
    <quotas><default></default></quotas>
</yandex>
"""


def client(
    url: str, *, connect_timeout: float = 2, send_receive_timeout: float = 60, **settings: Any
) -> Client:
    """A native-protocol client for `clickhouse://user:password@host:port/database`."""
    # On first use: the driver takes 0.3-0.7 s to import, and this module is imported by
    # every test process (the plugin's), most of which never talk to ClickHouse.
    from clickhouse_driver import Client  # noqa: PLC0415

    parts = urlsplit(url)
    return Client(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 9000,
        user=unquote(parts.username or "default"),
        password=unquote(parts.password or ""),
        database=parts.path.lstrip("/") or "default",
        connect_timeout=connect_timeout,
        send_receive_timeout=send_receive_timeout,
        settings=settings,
    )


def with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def _problem(url: str, timeout: float = 1.0) -> str | None:
    """None when the server at `url` runs `SELECT 1`, else what went wrong, in its words."""
    parts = urlsplit(url)
    try:
        # A plain TCP probe first: the driver logs a traceback for every refused connect.
        address = (parts.hostname or "127.0.0.1", parts.port or 9000)
        socket.create_connection(address, timeout).close()
    except (OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    from clickhouse_driver.errors import Error as ClickHouseError  # noqa: PLC0415 - see client

    conn = client(url, connect_timeout=timeout, send_receive_timeout=timeout)
    try:
        conn.execute("SELECT 1")
    except (ClickHouseError, OSError, EOFError) as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    finally:
        conn.disconnect()
    return None


def _answers(url: str) -> bool:
    return _problem(url) is None


def _local(run: Run) -> Server:
    binary = find_binary(["clickhouse-server", "clickhouse"])
    prefix = [str(binary)] if binary.name == "clickhouse-server" else [str(binary), "server"]
    folder = run.path / "clickhouse"
    for sub in ("data", "tmp", "user_files", "format_schemas"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "users.xml").write_text(_USERS)

    def argv(port: int) -> list[str]:
        config = folder / "config.xml"
        config.write_text(_CONFIG.format(port=port, dir=folder))
        return [*prefix, f"--config-file={config}"]

    started = start_server(
        run,
        "clickhouse-server",
        argv,
        lambda port: _answers(f"clickhouse://default@127.0.0.1:{port}/default"),
        log=folder / "server.log",
        grace=2.0,
    )
    url = f"clickhouse://default@127.0.0.1:{started.port}/default"
    conn = client(url)
    try:
        version = str(conn.execute("SELECT version()")[0][0])
    finally:
        conn.disconnect()
    return Server("clickhouse", "local", url, version, extra=started.extra())


def _embedded(run: Run) -> Server:
    raise Unavailable("no wheel ships a ClickHouse server (chdb is in-process only, no protocol)")


def _url(run: Run) -> Server:
    url = check_external(SERVICE, "does not answer on the native protocol")
    return Server("clickhouse", "url", url, owned=False)


def _docker_provider(run: Run) -> Server:
    _docker.engine()
    from testcontainers.clickhouse import ClickHouseContainer  # noqa: PLC0415

    container = ClickHouseContainer(
        "clickhouse/clickhouse-server:24.8", username="default", password=""
    )
    host, port = _docker.start(run, "clickhouse-container", container, 9000)
    return Server("clickhouse", "docker", f"clickhouse://default@{host}:{port}/default")


SERVICE = Service(
    name="clickhouse",
    title="ClickHouse",
    url_env="APEX_TEST_CLICKHOUSE_URL",
    fixes={"local": "apt-get install -y clickhouse-server"},
    providers={"url": _url, "local": _local, "embedded": _embedded, "docker": _docker_provider},
    problem=_problem,
)


def worker_database(run: Run, server: Server, slot: int) -> str:
    """The URL of worker `slot`'s own, empty database."""
    name = f"{run.name}_w{slot}"
    if not server.owned:
        run.record(f"ch-db-w{slot}", "ch_database", url=server.url, name=name)
    conn = client(server.url)
    try:
        conn.execute(f"DROP DATABASE IF EXISTS {safe_identifier(name)}")
        conn.execute(f"CREATE DATABASE {name}")
    finally:
        conn.disconnect()
    return with_database(server.url, name)


@dataclass
class DatabaseReset:
    """Empties every table of one database (views excepted)."""

    url: str

    def __call__(self) -> list[str]:
        database = safe_identifier(urlsplit(self.url).path.lstrip("/"))
        # Short timeouts: a server that stopped answering is found out in seconds.
        conn = client(self.url, connect_timeout=CONNECT_TIMEOUT, send_receive_timeout=RESET_TIMEOUT)
        try:
            tables = [
                str(row[0])
                for row in conn.execute(
                    "SELECT name FROM system.tables WHERE database = %(db)s "
                    "AND engine NOT LIKE '%%View'",
                    {"db": database},
                )
            ]
            for table in tables:
                conn.execute(f"TRUNCATE TABLE {database}.`{table}`")
        finally:
            conn.disconnect()
        return tables


def _drop_recorded(record: dict[str, Any]) -> None:
    conn = client(record["url"])
    try:
        conn.execute(f"DROP DATABASE IF EXISTS {safe_identifier(record['name'])}")
    finally:
        conn.disconnect()


register_cleaner("ch_database", _drop_recorded)

__all__ = ["SERVICE", "DatabaseReset", "client", "with_database", "worker_database"]
