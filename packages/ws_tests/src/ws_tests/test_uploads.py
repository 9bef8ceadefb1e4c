"""001#21 Binary messages: chunked upload with progress, resume after a reconnect, errors.

`upload.start` announces name, size and SHA-256 and gets an upload id and a chunk size;
binary frames carry 16 bytes of upload id (uuid bytes), an 8-byte big-endian offset and the
data; each chunk is answered with `upload.progress`, the last one with `upload.complete`
once the checksum matches. The state lives in Redis (24 h), so a client that lost its
connection, even to another instance, resumes with `upload.resume` from the bytes received.
"""

from __future__ import annotations

import hashlib
import random
import uuid

import pytest

from apex_testkit import RedisNamespace
from ws_tests.client import Connect, Frame, WsClient
from ws_tests.gateways import FAST, Serve
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
async def test_upload_state_is_kept_in_redis_for_a_day(
    serve_gateway: Serve, ws_open: Connect, ws_user: WsUser, redis_namespace: RedisNamespace
) -> None:
    client = await ws_open(await serve_gateway(), ws_user.token, **PLAIN)
    data = payload(2 * 65536)
    ready = await start(client, data)
    await send_chunks(client, ready["upload_id"], data, 0, ready["chunk_size"], until=65536)

    redis = redis_namespace.client()
    try:
        keys = list(redis.scan_iter(f"{redis_namespace.prefix}upload:{ready['upload_id']}*"))
        ttls = {key: redis.ttl(key) for key in keys}
    finally:
        redis.close()

    assert f"{redis_namespace.prefix}upload:{ready['upload_id']}" in keys, keys
    for key, ttl in ttls.items():
        assert DAY - 60 <= int(ttl) <= DAY, f"{key} expires in {ttl} s, not 24 h"
