"""001#21 Binary messages: chunked upload with progress, resume after a reconnect, errors.

`upload.start` announces name, size and SHA-256 and gets an upload id and a chunk size;
binary frames carry 16 bytes of upload id (uuid bytes), an 8-byte big-endian offset and the
data; each chunk is answered with `upload.progress`, the last one with `upload.complete`
once the checksum matches. The state lives in Redis (an unfinished upload for
APEX_WS_UPLOAD_TTL after its last chunk, a complete one for 24 h), so a client that lost
its connection, even to another instance, resumes with `upload.resume` from the bytes
received. What one user may hold is bounded: binary frames have their own rate
(APEX_WS_BINARY_RATE), and a user's stored uploads a count and a byte quota
(APEX_WS_UPLOADS_PER_USER, APEX_WS_UPLOAD_BYTES_PER_USER).
"""

from __future__ import annotations

import hashlib
import random
import uuid
from typing import Any

import pytest

from apex_testkit import RedisNamespace, eventually
from ws_tests.client import Connect, Frame, WsClient
from ws_tests.gateways import FAST, Gateways, Serve, metric
from ws_tests.users import MakeUser, WsUser

BVJ = pytest.mark.bvj(
    segment="mid", goal="File upload over the live connection, resumable on flaky networks",
    mrr=5000, scenario="001#21",
)  # fmt: skip
pytestmark = [BVJ]

# The other upload tests test uploads, on uncompressed connections (see the first test).
PLAIN = {"compression": None}
DAY = 24 * 3600


def payload(size: int, seed: int = 21) -> bytes:
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunk(upload_id: str, offset: int, data: bytes) -> bytes:
    """A binary upload frame: uuid bytes + 8-byte big-endian offset + data."""
    return uuid.UUID(upload_id).bytes + offset.to_bytes(8, "big") + data


async def start(client: WsClient, data: bytes, *, name: str = "report.bin",
                digest: str | None = None, size: int | None = None) -> Frame:  # fmt: skip
    ready = await client.request(
        "upload.start", name=name, size=len(data) if size is None else size,
        sha256=sha256(data) if digest is None else digest,
    )  # fmt: skip
    assert ready["type"] == "upload.ready", ready
    assert ready["offset"] == 0, ready
    assert isinstance(ready["chunk_size"], int), ready
    assert ready["chunk_size"] > 0, ready
    uuid.UUID(str(ready["upload_id"]))
    return ready


async def send_chunks(client: WsClient, upload_id: str, data: bytes, offset: int,
                      chunk_size: int, *, until: int | None = None) -> list[Frame]:  # fmt: skip
    """Send data[offset:until] chunk by chunk; return the progress frames, one per chunk."""
    end = len(data) if until is None else until
    progress = []
    while offset < end:
        piece = data[offset : min(offset + chunk_size, end)]
        await client.send_raw(chunk(upload_id, offset, piece))
        offset += len(piece)
        frame = await client.expect("upload.progress", upload_id=upload_id)
        assert (frame["received"], frame["size"]) == (offset, len(data)), frame
        progress.append(frame)
    return progress


def expected_offset(error: Frame) -> object:
    """The offset a bad_offset error says the gateway expects."""
    return error.get("expected_offset", error.get("offset"))


def stored_uploads(redis_namespace: RedisNamespace) -> dict[str, dict[str, Any]]:
    """The uploads in Redis, by id: their meta hash and the TTLs of their keys."""
    redis = redis_namespace.client()
    prefix = f"{redis_namespace.prefix}upload:"
    try:
        found: dict[str, dict[str, Any]] = {}
        for key in redis.scan_iter(f"{prefix}*"):
            upload_id = key[len(prefix) :].removesuffix(":data")
            if not _is_uuid(upload_id):
                continue  # not an upload's own key (an index of the gateway's)
            entry = found.setdefault(upload_id, {"meta": {}, "ttls": {}})
            entry["ttls"][key] = int(redis.ttl(key))
            if not key.endswith(":data"):
                entry["meta"] = redis.hgetall(key)
        return found
    finally:
        redis.close()


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


async def chunk_replies(client: WsClient, count: int) -> list[Frame]:
    """The next `count` answers to binary frames (progress or error), in arrival order."""
    replies: list[Frame] = []
    while len(replies) < count:
        frame = await client._next(10)
        if frame["type"] in ("upload.progress", "error"):
            replies.append(frame)
        else:
            client.inbox.append(frame)
    return replies


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.parametrize("compression", ["deflate", None], ids=["deflate", "uncompressed"])
async def test_a_large_file_arrives_in_chunks_with_progress_and_a_verified_checksum(
    serve_gateway: Serve, ws_open: Connect, ws_user: WsUser, compression: str | None
) -> None:
    """Chunks of the advertised size go through whether or not the connection negotiated
    permessage-deflate (browsers do by default; random bytes grow when deflated)."""
    url = await serve_gateway(**FAST)
    client = await ws_open(url, ws_user.token, compression=compression)
    data = payload(16 * 65536 + 1000)  # 17 chunks of the advertised size, the last one short

    ready = await start(client, data, name="quarterly.parquet")
    assert ready["chunk_size"] == 65536
    progress = await send_chunks(client, ready["upload_id"], data, 0, ready["chunk_size"])

    assert len(progress) == 17
    complete = await client.expect("upload.complete", upload_id=ready["upload_id"])
    assert complete["sha256"] == sha256(data)
    assert not [f for f in client.inbox if f["type"] == "error"], client.inbox


@pytest.mark.L2
@pytest.mark.L3
async def test_an_upload_resumes_on_another_instance_from_the_bytes_received(
    serve_gateway: Serve, ws_open: Connect, ws_user: WsUser
) -> None:
    first, second = await serve_gateway(instance=0), await serve_gateway(instance=1)
    data = payload(5 * 65536 - 123)
    before = await ws_open(first, ws_user.token, **PLAIN)
    ready = await start(before, data)
    upload_id, size = ready["upload_id"], ready["chunk_size"]
    await send_chunks(before, upload_id, data, 0, size, until=2 * size)
    await before.close()  # the network went away

    after = await ws_open(second, ws_user.token, **PLAIN)
    resumed = await after.request("upload.resume", upload_id=upload_id)

    assert resumed["type"] == "upload.ready", resumed
    assert (resumed["upload_id"], resumed["offset"]) == (upload_id, 2 * size)
    await send_chunks(after, upload_id, data, 2 * size, resumed["chunk_size"])
    complete = await after.expect("upload.complete", upload_id=upload_id)
    assert complete["sha256"] == sha256(data)


@pytest.mark.L2
@pytest.mark.L3
async def test_a_chunk_at_the_wrong_offset_is_refused_and_the_upload_goes_on(
    serve_gateway: Serve, ws_open: Connect, ws_user: WsUser
) -> None:
    client = await ws_open(await serve_gateway(), ws_user.token, **PLAIN)
    data = payload(3 * 65536)
    ready = await start(client, data)
    upload_id, size = ready["upload_id"], ready["chunk_size"]
    await send_chunks(client, upload_id, data, 0, size, until=size)

    for wrong in (2 * size, 0, size - 1):  # ahead (a gap), a repeat, overlapping
        await client.send_raw(chunk(upload_id, wrong, data[wrong : wrong + size]))
        error = await client.expect("error", code="bad_offset")
        assert expected_offset(error) == size, error

    await send_chunks(client, upload_id, data, size, size)
    complete = await client.expect("upload.complete", upload_id=upload_id)
    assert complete["sha256"] == sha256(data), "a refused chunk was written anyway"


@pytest.mark.L2
@pytest.mark.L3
async def test_a_checksum_mismatch_fails_the_upload(
    serve_gateway: Serve, ws_open: Connect, ws_user: WsUser
) -> None:
    client = await ws_open(await serve_gateway(), ws_user.token, **PLAIN)
    data = payload(2 * 65536 + 7)
    ready = await start(client, data, digest=sha256(b"something else"))

    await send_chunks(client, ready["upload_id"], data, 0, ready["chunk_size"])

    error = await client.expect("error", code="checksum_mismatch")
    assert error.get("upload_id", ready["upload_id"]) == ready["upload_id"], error
    assert (await client.request("ping"))["type"] == "pong"
    assert not [f for f in client.inbox if f["type"] == "upload.complete"], client.inbox


@pytest.mark.L2
@pytest.mark.L3
async def test_an_upload_over_the_maximum_size_is_refused_at_start(
    serve_gateway: Serve, ws_open: Connect, ws_user: WsUser
) -> None:
    limit = 300_000
    client = await ws_open(
        await serve_gateway(APEX_WS_MAX_UPLOAD=str(limit)), ws_user.token, **PLAIN
    )

    refused = await client.request("upload.start", name="big.iso", size=limit + 1, sha256="0" * 64)
    accepted = await client.request("upload.start", name="ok.iso", size=limit, sha256="0" * 64)

    assert (refused["type"], refused.get("code")) == ("error", "too_large"), refused
    assert accepted["type"] == "upload.ready", accepted


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_a_binary_frame_outside_any_upload_is_refused(
    serve_gateway: Serve, ws_open: Connect, ws_user: WsUser
) -> None:
    client = await ws_open(await serve_gateway(), ws_user.token, **PLAIN)

    await client.send_raw(chunk(str(uuid.uuid4()), 0, b"stray bytes"))

    await client.expect("error", code="unexpected_binary")
    assert (await client.request("ping"))["type"] == "pong", "the connection stays usable"


@pytest.mark.L2
@pytest.mark.L3
async def test_another_user_cannot_resume_or_feed_my_upload(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser
) -> None:
    url = await serve_gateway()
    owner, intruder = await make_ws_user(), await make_ws_user()
    owner_tab, intruder_tab = (
        await ws_open(url, owner.token, **PLAIN),
        await ws_open(url, intruder.token, **PLAIN),
    )
    data = payload(2 * 65536)
    ready = await start(owner_tab, data)
    upload_id, size = ready["upload_id"], ready["chunk_size"]

    resumed = await intruder_tab.request("upload.resume", upload_id=upload_id)
    await intruder_tab.send_raw(chunk(upload_id, 0, b"\0" * size))

    assert resumed["type"] == "error", f"another user's upload was handed out: {resumed}"
    refused = await intruder_tab.expect("error")
    assert refused.get("code") != "internal", refused
    await send_chunks(owner_tab, upload_id, data, 0, size)
    complete = await owner_tab.expect("upload.complete", upload_id=upload_id)
    assert complete["sha256"] == sha256(data)


@pytest.mark.L2
@pytest.mark.L3
async def test_an_unfinished_upload_is_kept_for_the_upload_ttl_and_a_complete_one_for_a_day(
    serve_gateway: Serve, ws_open: Connect, ws_user: WsUser, redis_namespace: RedisNamespace
) -> None:
    upload_ttl = 600
    client = await ws_open(
        await serve_gateway(APEX_WS_UPLOAD_TTL=str(upload_ttl)), ws_user.token, **PLAIN
    )
    data = payload(2 * 65536)
    unfinished = await start(client, data)
    await send_chunks(client, unfinished["upload_id"], data, 0, 65536, until=65536)
    small = payload(1000, seed=7)
    complete = await start(client, small, name="small.bin")
    await send_chunks(client, complete["upload_id"], small, 0, complete["chunk_size"])
    await client.expect("upload.complete", upload_id=complete["upload_id"])

    stored = stored_uploads(redis_namespace)

    assert set(stored) == {unfinished["upload_id"], complete["upload_id"]}, stored
    assert stored[unfinished["upload_id"]]["meta"]["state"] == "open"
    for key, ttl in stored[unfinished["upload_id"]]["ttls"].items():
        assert upload_ttl - 60 <= ttl <= upload_ttl, f"{key} expires in {ttl} s"
    assert stored[complete["upload_id"]]["meta"]["state"] == "complete"
    for key, ttl in stored[complete["upload_id"]]["ttls"].items():
        assert DAY - 60 <= ttl <= DAY, f"{key} expires in {ttl} s, not 24 h"


# An abandoned upload's life: long enough for its start and first chunk on a loaded machine
# (a chunk renews it), short enough not to hold the test up.
SHORT_TTL = 0.4


@pytest.mark.L2
@pytest.mark.L3
async def test_an_abandoned_upload_is_forgotten_after_the_upload_ttl_and_frees_the_quota(
    serve_gateway: Serve, ws_open: Connect, ws_user: WsUser, redis_namespace: RedisNamespace
) -> None:
    url = await serve_gateway(APEX_WS_UPLOAD_TTL=str(SHORT_TTL), APEX_WS_UPLOADS_PER_USER="1")
    client = await ws_open(url, ws_user.token, **PLAIN)
    data = payload(3000)
    abandoned = await start(client, data)
    await send_chunks(client, abandoned["upload_id"], data, 0, 1000, until=1000)

    async def forgotten() -> bool:
        return not stored_uploads(redis_namespace)

    await eventually(forgotten, timeout=10, message="the abandoned upload's keys expire")
    resumed = await client.request("upload.resume", upload_id=abandoned["upload_id"])
    assert (resumed["type"], resumed["code"]) == ("error", "unknown_upload"), resumed
    again = await start(client, data, name="again.bin")  # the quota of one is free again
    assert set(stored_uploads(redis_namespace)) == {again["upload_id"]}


# --- what one user may hold --------------------------------------------------------------


@pytest.mark.L2
@pytest.mark.L3
async def test_binary_frames_over_the_binary_rate_are_refused_and_not_stored(
    gateways: Gateways, ws_open: Connect, ws_user: WsUser, redis_namespace: RedisNamespace
) -> None:
    """Binary frames count against a rate of their own: a flood of chunks is refused with
    `rate_limited` (naming the upload and the offset) like any other message."""
    gateway = await gateways.start(APEX_WS_BINARY_RATE="3/60", APEX_WS_RATE_VIOLATIONS="100")
    client = await ws_open(gateway.url, ws_user.token, **PLAIN)
    data = payload(6 * 1000)
    upload_id = (await start(client, data))["upload_id"]
    before = metric(await gateway.metrics(), "apex_gateway_rate_limited_total")

    for offset in range(0, 6000, 1000):  # six chunks back to back: three over the rate
        await client.send_raw(chunk(upload_id, offset, data[offset : offset + 1000]))
    replies = await chunk_replies(client, 6)

    assert [(r["type"], r.get("received")) for r in replies[:3]] == [
        ("upload.progress", 1000),
        ("upload.progress", 2000),
        ("upload.progress", 3000),
    ]
    refused = replies[3:]
    assert [(r["type"], r["code"], r["offset"]) for r in refused] == [
        ("error", "rate_limited", 3000),
        ("error", "rate_limited", 4000),
        ("error", "rate_limited", 5000),
    ]
    assert all(r["upload_id"] == upload_id and r["retry_after_ms"] > 0 for r in refused)
    assert metric(await gateway.metrics(), "apex_gateway_rate_limited_total") - before == 3
    stored = stored_uploads(redis_namespace)[upload_id]["meta"]
    assert stored["received"] == "3000", "a refused chunk was stored"


@pytest.mark.L2
@pytest.mark.L3
async def test_uploads_over_the_users_count_quota_are_refused_and_nothing_is_created(
    serve_gateway: Serve, ws_open: Connect, ws_user: WsUser, redis_namespace: RedisNamespace
) -> None:
    url = await serve_gateway(APEX_WS_UPLOADS_PER_USER="2")
    tabs = [await ws_open(url, ws_user.token, **PLAIN) for _ in range(2)]  # one user, 2 tabs
    first = await start(tabs[0], payload(1000, seed=1), name="one.bin")
    second = await start(tabs[1], payload(1000, seed=2), name="two.bin")

    refused = await tabs[0].request("upload.start", name="three.bin", size=1000, sha256="0" * 64)

    assert (refused["type"], refused["code"]) == ("error", "quota_exceeded"), refused
    assert set(stored_uploads(redis_namespace)) == {first["upload_id"], second["upload_id"]}


@pytest.mark.L2
@pytest.mark.L3
async def test_uploads_over_the_users_byte_quota_are_refused_and_nothing_is_created(
    serve_gateway: Serve, ws_open: Connect, make_ws_user: MakeUser, redis_namespace: RedisNamespace
) -> None:
    url = await serve_gateway(APEX_WS_UPLOAD_BYTES_PER_USER="300000")
    user, other = await make_ws_user(), await make_ws_user()
    client, other_client = await ws_open(url, user.token), await ws_open(url, other.token)
    big = await client.request("upload.start", name="big.bin", size=200_000, sha256="0" * 64)
    assert big["type"] == "upload.ready", big

    over = await client.request("upload.start", name="over.bin", size=100_001, sha256="0" * 64)
    fits = await client.request("upload.start", name="fits.bin", size=100_000, sha256="0" * 64)
    others = await other_client.request("upload.start", name="o.bin", size=300_000, sha256="0" * 64)

    assert (over["type"], over["code"]) == ("error", "quota_exceeded"), over
    assert fits["type"] == "upload.ready", fits
    assert others["type"] == "upload.ready", "the quota is per user"
    owners = sorted(entry["meta"]["user_id"] for entry in stored_uploads(redis_namespace).values())
    assert owners == sorted([user.user_id, user.user_id, other.user_id])


# --- refusals of malformed upload messages -------------------------------------------------

SHA = "0" * 64
INVALID_STARTS = {
    "no-name": {"size": 10, "sha256": SHA},
    "empty-name": {"name": "", "size": 10, "sha256": SHA},
    "long-name": {"name": "n" * 256, "size": 10, "sha256": SHA},
    "name-not-text": {"name": 7, "size": 10, "sha256": SHA},
    "no-size": {"name": "a.bin", "sha256": SHA},
    "size-zero": {"name": "a.bin", "size": 0, "sha256": SHA},
    "size-negative": {"name": "a.bin", "size": -1, "sha256": SHA},
    "size-text": {"name": "a.bin", "size": "10", "sha256": SHA},
    "size-bool": {"name": "a.bin", "size": True, "sha256": SHA},
    "size-fraction": {"name": "a.bin", "size": 1.5, "sha256": SHA},
    "no-sha256": {"name": "a.bin", "size": 10},
    "sha256-short": {"name": "a.bin", "size": 10, "sha256": "0" * 63},
    "sha256-not-hex": {"name": "a.bin", "size": 10, "sha256": "g" * 64},
}


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.parametrize("fields", list(INVALID_STARTS.values()), ids=list(INVALID_STARTS))
async def test_an_invalid_upload_start_is_answered_invalid_and_creates_nothing(
    serve_gateway: Serve,
    ws_open: Connect,
    ws_user: WsUser,
    redis_namespace: RedisNamespace,
    fields: dict[str, Any],
) -> None:
    client = await ws_open(await serve_gateway(), ws_user.token, **PLAIN)

    reply = await client.request("upload.start", **fields)

    assert (reply["type"], reply["code"]) == ("error", "invalid"), reply
    assert isinstance(reply["detail"], str), reply
    assert stored_uploads(redis_namespace) == {}
    assert (await client.request("ping"))["type"] == "pong"


@pytest.mark.L2
@pytest.mark.L3
async def test_a_binary_frame_over_a_full_chunk_closes_1009_and_a_full_chunk_is_taken(
    gateways: Gateways, ws_open: Connect, ws_user: WsUser, redis_namespace: RedisNamespace
) -> None:
    """The frame limit of binary frames is APEX_WS_MAX_MESSAGE plus the 24-byte header:
    a full chunk is taken, one byte more closes the connection 1009 (nothing stored)."""
    gateway = await gateways.start(APEX_WS_MAX_MESSAGE="4096")
    client = await ws_open(gateway.url, ws_user.token, **PLAIN)
    data = payload(3 * 4096)
    ready = await start(client, data)
    assert ready["chunk_size"] == 4096
    await send_chunks(client, ready["upload_id"], data, 0, 4096, until=4096)

    await client.send_raw(chunk(ready["upload_id"], 4096, data[4096 : 2 * 4096 + 1]))

    assert await client.closed() == (1009, "message too big")
    assert stored_uploads(redis_namespace)[ready["upload_id"]]["meta"]["received"] == "4096"
