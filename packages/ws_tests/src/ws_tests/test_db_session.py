"""001#16 WebSocket and database session coordination: one transaction per message.

`note.create` writes a note and its "created" event in one transaction: after the ack both
rows are committed (visible to anyone); a validation error writes nothing; a database error
in either insert rolls back both (nothing half-written) and leaves the connection, the other
connections and the database sessions usable, with no transaction left open. The checks
read the database directly (L2/L3: the worker's database, which the gateway writes to).
Database errors are injected with a trigger on one table for the test's user only.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from apex_testkit import eventually
from ws_tests.client import Connect, Frame, WsClient, reply_to
from ws_tests.gateways import Serve
from ws_tests.users import MakeUser, WsUser

BVJ = pytest.mark.bvj(
    segment="platform", goal="Data integrity: real-time writes are all-or-nothing", mrr=10000,
    scenario="001#16",
)  # fmt: skip
pytestmark = [BVJ, pytest.mark.L2, pytest.mark.L3]


OPEN_TRANSACTIONS = """
    SELECT count(*) FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()
      AND state LIKE 'idle in transaction%'
"""


async def create_note(client: WsClient, title: Any, body: Any = "body text") -> Frame:
    return await client.request("note.create", data={"title": title, "body": body})


def note_id_of(ack: Frame) -> str:
    assert ack["type"] == "ack", ack
    return str(uuid.UUID(str(ack["result"]["note_id"])))


async def notes_of(db: Any, user_id: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT id::text AS id, title, body, created_at FROM ws_notes WHERE user_id = $1"
        " ORDER BY created_at, id",
        user_id,
    )
    return [dict(row) for row in rows]


async def events_of(db: Any, note_id: str) -> list[str]:
    rows = await db.fetch("SELECT kind FROM ws_note_events WHERE note_id = $1::uuid", note_id)
    return [str(row["kind"]) for row in rows]


async def orphan_events(db: Any) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM ws_note_events e WHERE NOT EXISTS"
        " (SELECT 1 FROM ws_notes n WHERE n.id = e.note_id)"
    )
    return count


async def notes_without_event(db: Any, user_id: str) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM ws_notes n WHERE n.user_id = $1 AND NOT EXISTS"
        " (SELECT 1 FROM ws_note_events e WHERE e.note_id = n.id)",
        user_id,
    )
    return count


async def no_open_transaction(db: Any) -> bool:
    return int(await db.fetchval(OPEN_TRANSACTIONS)) == 0


@asynccontextmanager
async def failing_inserts(db: Any, table: str, user_id: str) -> AsyncIterator[None]:
    """Inserts into `table` for `user_id`'s notes raise, as a broken database would."""
    assert table in ("ws_notes", "ws_note_events")
    user = str(uuid.UUID(user_id))  # a literal in the trigger: only a valid uuid gets in
    owner = "NEW.user_id" if table == "ws_notes" else (
        "(SELECT user_id FROM ws_notes WHERE id = NEW.note_id)"
    )  # fmt: skip
    mine = f"{owner} = '" + user + "'"
    await db.execute(f"""
        CREATE FUNCTION ws_tests_fail() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF {mine} THEN RAISE EXCEPTION 'injected failure (ws_tests)'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER ws_tests_fail BEFORE INSERT ON {table}
            FOR EACH ROW EXECUTE FUNCTION ws_tests_fail();
    """)  # fmt: skip
    try:
        yield
    finally:
        await db.execute(
            f"DROP TRIGGER IF EXISTS ws_tests_fail ON {table}; "
            "DROP FUNCTION IF EXISTS ws_tests_fail();"
        )


async def test_a_note_and_its_event_are_committed_before_the_ack(
    serve_gateway: Serve, ws_open: Connect, ws_user: WsUser, notes_db: Any
) -> None:
    client = await ws_open(await serve_gateway(), ws_user.token)

    ack = await create_note(client, "Q3 budget", "cut cloud costs by 20%")

    note_id = note_id_of(ack)
    # No waiting: the ack comes after the commit, so another session sees both rows now.
    notes = await notes_of(notes_db, ws_user.user_id)
    assert [(n["id"], n["title"], n["body"]) for n in notes] == [
        (note_id, "Q3 budget", "cut cloud costs by 20%")
    ]
    assert notes[0]["created_at"] is not None
    assert len(await events_of(notes_db, note_id)) == 1
    # Other services of the worker share the database and may be between two statements
    # of their own transaction at this moment; one the gateway left open stays open.
    await eventually(lambda: no_open_transaction(notes_db), timeout=5, message="no open txn")


async def test_note_list_returns_the_users_own_notes_only(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    url = await serve_gateway()
    bob, carol = await make_ws_user(), await make_ws_user()
    bob_tab, carol_tab = await ws_open(url, bob.token), await ws_open(url, carol.token)
    for title in ("bob 1", "bob 2"):
        note_id_of(await create_note(bob_tab, title))
    note_id_of(await create_note(carol_tab, "carol 1"))

    bob_list = await bob_tab.request("note.list")
    carol_list = await carol_tab.request("note.list")

    assert bob_list["type"] == carol_list["type"] == "result"
    assert sorted(n["title"] for n in bob_list["notes"]) == ["bob 1", "bob 2"]
    assert [n["title"] for n in carol_list["notes"]] == ["carol 1"]


INVALID = {
    "empty title": {"title": "", "body": "x"},
    "title over 200": {"title": "t" * 201, "body": "x"},
    "no title": {"body": "x"},
    "title not a string": {"title": 123, "body": "x"},
    "title null": {"title": None, "body": "x"},
    "body not a string": {"title": "ok", "body": ["x"]},
    "data not an object": "title",
}


@pytest.mark.parametrize("data", list(INVALID.values()), ids=list(INVALID))
async def test_an_invalid_note_is_refused_and_nothing_is_written(
    serve_gateway: Serve, ws_open: Connect, ws_user: WsUser, notes_db: Any, data: Any
) -> None:
    client = await ws_open(await serve_gateway(), ws_user.token)

    reply = await client.request("note.create", data=data)

    assert (reply["type"], reply.get("code")) == ("error", "invalid"), reply
    assert await notes_of(notes_db, ws_user.user_id) == []
    assert await orphan_events(notes_db) == 0
    # Other services of the worker share the database and may be between two statements
    # of their own transaction at this moment; one the gateway left open stays open.
    await eventually(lambda: no_open_transaction(notes_db), timeout=5, message="no open txn")
    note_id_of(await create_note(client, "still works"))


async def test_a_note_without_data_is_refused(
    serve_gateway: Serve, ws_open: Connect, ws_user: WsUser, notes_db: Any
) -> None:
    client = await ws_open(await serve_gateway(), ws_user.token)

    reply = await client.request("note.create")

    assert (reply["type"], reply.get("code")) == ("error", "invalid"), reply
    assert await notes_of(notes_db, ws_user.user_id) == []


async def test_titles_of_1_and_200_characters_are_accepted(
    serve_gateway: Serve, ws_open: Connect, ws_user: WsUser, notes_db: Any
) -> None:
    client = await ws_open(await serve_gateway(), ws_user.token)

    ids = [note_id_of(await create_note(client, title)) for title in ("x", "é" * 200)]

    stored = {n["id"]: n["title"] for n in await notes_of(notes_db, ws_user.user_id)}
    assert stored == {ids[0]: "x", ids[1]: "é" * 200}


@pytest.mark.parametrize("table", ["ws_notes", "ws_note_events"])
async def test_a_database_error_rolls_the_whole_message_back(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser, notes_db: Any, table: str
) -> None:
    url = await serve_gateway()
    bob, carol = await make_ws_user(), await make_ws_user()
    bob_tab, other_tab = await ws_open(url, bob.token), await ws_open(url, bob.token)
    carol_tab = await ws_open(url, carol.token)

    async with failing_inserts(notes_db, table, bob.user_id):
        reply = await create_note(bob_tab, "doomed")
        # Meanwhile other users' writes go through.
        carol_note = note_id_of(await create_note(carol_tab, "fine"))

    assert (reply["type"], reply.get("code")) == ("error", "db_error"), reply
    # Nothing half-written: when the event insert failed, the note went with it.
    assert await notes_of(notes_db, bob.user_id) == []
    assert await orphan_events(notes_db) == 0
    assert len(await events_of(notes_db, carol_note)) == 1
    await eventually(lambda: no_open_transaction(notes_db), timeout=5, message="rolled back")
    # The connection, the user's other tab and the database sessions stay usable.
    again = [note_id_of(await create_note(tab, "retry")) for tab in (bob_tab, other_tab)]
    assert sorted(n["id"] for n in await notes_of(notes_db, bob.user_id)) == sorted(again)


async def test_concurrent_notes_from_several_tabs_each_commit_once(
    serve_gateway: Serve, ws_open: Connect, ws_user: WsUser, notes_db: Any
) -> None:
    url = await serve_gateway()
    tabs = [await ws_open(url, ws_user.token) for _ in range(4)]

    async def write(tab: WsClient, index: int) -> list[Frame]:
        ids = [await tab.send("note.create", data={"title": f"tab {index} note {n}", "body": ""})
               for n in range(5)]  # fmt: skip
        return [await reply_to(tab, message_id) for message_id in ids]

    replies = [r for batch in await asyncio.gather(*(write(t, i) for i, t in enumerate(tabs)))
               for r in batch]  # fmt: skip

    note_ids = [note_id_of(reply) for reply in replies]
    assert len(set(note_ids)) == 20
    stored = await notes_of(notes_db, ws_user.user_id)
    assert sorted(n["id"] for n in stored) == sorted(note_ids)
    assert await notes_without_event(notes_db, ws_user.user_id) == 0
    # Other services of the worker share the database and may be between two statements
    # of their own transaction at this moment; one the gateway left open stays open.
    await eventually(lambda: no_open_transaction(notes_db), timeout=5, message="no open txn")


async def test_a_connection_dropped_mid_write_leaves_no_half_written_note(
    serve_gateway: Serve, ws_open: Connect, ws_user: WsUser, notes_db: Any
) -> None:
    url = await serve_gateway()
    client = await ws_open(url, ws_user.token)
    for n in range(5):
        await client.send("note.create", data={"title": f"in flight {n}", "body": "b"})
    transport = client.ws.transport
    assert transport is not None
    transport.abort()  # gone, no close frame

    await eventually(lambda: no_open_transaction(notes_db), timeout=10, message="no open txn")
    assert await notes_without_event(notes_db, ws_user.user_id) == 0
    assert len(await notes_of(notes_db, ws_user.user_id)) <= 5
    fresh = await ws_open(url, ws_user.token)
    note_id_of(await create_note(fresh, "after the drop"))
