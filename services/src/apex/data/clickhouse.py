"""An asyncio client for ClickHouse over the native protocol.

clickhouse-driver is synchronous and one ``Client`` is one connection that must not
be used by two threads at once, so calls run in a worker thread one at a time.
The statements apex.data sends are in :mod:`apex.data.clickhouse_sql` (each runs on
ClickHouse 18.16 and on current releases).
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from clickhouse_driver import Client
from clickhouse_driver.errors import Error as ClickHouseDriverError

from apex.data import clickhouse_sql

__all__ = ["ClickHouse", "ClickHouseError"]

DEFAULT_PORT: Final = 9000
# ClickHouse's SIGTERM waits for running queries; a cap keeps every query (and so a
# server shutdown) bounded.
MAX_EXECUTION_TIME_SECONDS: Final = 60
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


class ClickHouseError(RuntimeError):
    """A ClickHouse URL is malformed or a query failed."""


class ClickHouse:
    """A ClickHouse connection whose methods are coroutines."""

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        *,
        user: str = "default",
        password: str = "",
        database: str = "default",
        connect_timeout: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self.database = database
        self._client = Client(
            host=host,
            port=port,
            user=user,
            password=password,
            database=database,
            connect_timeout=connect_timeout,
            send_receive_timeout=MAX_EXECUTION_TIME_SECONDS + 10,
            settings={"max_execution_time": MAX_EXECUTION_TIME_SECONDS},
        )
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> ClickHouse:
        """A client for ``clickhouse://user:password@host:port/database``."""
        try:
            parts = urlsplit(url)
            port = parts.port or DEFAULT_PORT
        except ValueError as exc:
            raise ClickHouseError(f"invalid ClickHouse URL: {exc}") from None
        if parts.scheme != "clickhouse" or not parts.hostname:
            raise ClickHouseError(
                "a ClickHouse URL looks like clickhouse://user:password@host:9000/database"
            )
        database = unquote(parts.path.lstrip("/")) or "default"
        return cls(
            parts.hostname,
            port,
            user=unquote(parts.username) if parts.username else "default",
            password=unquote(parts.password) if parts.password else "",
            database=database,
        )

    def __repr__(self) -> str:
        return f"ClickHouse(host={self.host!r}, port={self.port}, database={self.database!r})"

    async def ping(self) -> bool:
        """Whether the server answers a trivial query."""
        try:
            rows = await self.execute(clickhouse_sql.PING)
        except ClickHouseError:
            return False
        return rows == [(1,)]

    async def execute(
        self, sql: str, params: Mapping[str, Any] | Sequence[Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Run ``sql`` (``%(name)s`` placeholders filled from ``params``) and return its rows."""
        result = await self._call(sql, params)
        return list(result) if isinstance(result, list) else []

    async def insert(
        self, table: str, rows: Iterable[Sequence[Any]], columns: Sequence[str]
    ) -> int:
        """Insert ``rows`` (values in ``columns`` order) into ``table``; return the row count."""
        for name in (table, *columns):
            if not _IDENTIFIER.fullmatch(name):
                # Identifiers cannot be bound as parameters: refuse anything but plain names.
                raise ClickHouseError(f"not a plain identifier: {name!r}")
        if not columns:
            raise ClickHouseError("insert needs at least one column")
        data = [tuple(row) for row in rows]
        if not data:
            return 0
        await self._call(clickhouse_sql.insert(table, columns), data)
        return len(data)

    async def close(self) -> None:
        """Close the connection (the next call reconnects)."""
        await asyncio.to_thread(self._locked, self._client.disconnect)

    async def __aenter__(self) -> ClickHouse:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _call(self, sql: str, params: Any) -> Any:
        try:
            return await asyncio.to_thread(self._locked, self._client.execute, sql, params)
        except (ClickHouseDriverError, OSError, EOFError) as exc:
            raise ClickHouseError(f"ClickHouse query failed: {type(exc).__name__}: {exc}") from exc

    def _locked(self, func: Any, *args: Any) -> Any:
        with self._lock:
            return func(*args)
