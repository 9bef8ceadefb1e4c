"""Notes written over the WebSocket (``note.create`` / ``note.list``), in PostgreSQL.

A note and its ``created`` event are written in one transaction: either both rows
exist or neither does. Database calls go through :class:`apex.gateway.database.Database`
(the ``postgres`` breaker and a timeout): a failure is the error ``db_error``.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import asyncpg

from apex.gateway.database import Database, DatabaseError

__all__ = ["NoteError", "NoteStore", "validate_note"]

T = TypeVar("T")

MAX_TITLE: Final = 200
MAX_BODY: Final = 60_000


class NoteError(Exception):
    """A note request was refused with error ``code`` (invalid, db_error)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def validate_note(data: Any) -> tuple[str, str]:
    """``(title, body)`` of a valid ``note.create`` data object; NoteError invalid otherwise."""
    if not isinstance(data, dict):
        raise NoteError("invalid", "data must be an object with title and body")
    title, body = data.get("title"), data.get("body", "")
    if not isinstance(title, str) or not 1 <= len(title) <= MAX_TITLE:
        raise NoteError("invalid", f"title must be a string of 1..{MAX_TITLE} characters")
    if not isinstance(body, str) or len(body) > MAX_BODY:
        raise NoteError("invalid", f"body must be a string of at most {MAX_BODY} characters")
    if "\x00" in title or "\x00" in body:
        raise NoteError("invalid", "title and body must not contain NUL characters")
    return title, body


class NoteStore:
    """The ws_notes table (and its events) in the gateway's database."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def _call(self, fn: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
        try:
            return await self._db.call(fn)
        except DatabaseError as exc:
            raise NoteError("db_error", str(exc)) from None

    async def create(self, user_id: str, data: Any) -> str:
        """Insert a note and its event in one transaction; return the note id."""
        title, body = validate_note(data)
        note_id = uuid.uuid4()

        async def insert(pool: asyncpg.Pool) -> None:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO ws_notes (id, user_id, title, body) VALUES ($1, $2, $3, $4)",
                    note_id,
                    user_id,
                    title,
                    body,
                )
                await conn.execute(
                    "INSERT INTO ws_note_events (note_id, kind) VALUES ($1, 'created')", note_id
                )

        await self._call(insert)
        return str(note_id)

    async def list(self, user_id: str) -> list[dict[str, Any]]:
        """The user's notes, oldest first."""

        async def select(pool: asyncpg.Pool) -> list[asyncpg.Record]:
            rows: list[asyncpg.Record] = await pool.fetch(
                "SELECT id, title, body, created_at FROM ws_notes WHERE user_id = $1 "
                "ORDER BY created_at, id",
                user_id,
            )
            return rows

        rows = await self._call(select)
        return [
            {
                "note_id": str(row["id"]),
                "title": row["title"],
                "body": row["body"],
                "created_at": row["created_at"].isoformat(),
            }
            for row in rows
        ]
