"""The gateway's pure parts: routing, breaker, rate limit, frames, notes and settings."""

from __future__ import annotations

import collections
import struct
import uuid

import pytest

from apex.common.config import ConfigError
from apex.common.config import RateLimit as Rate
from apex.gateway.breaker import Breaker, BreakerState, CircuitOpen
from apex.gateway.fanout import MessageLog, message_frame
from apex.gateway.metrics import Metrics
from apex.gateway.notes import NoteError, validate_note
from apex.gateway.ratelimit import TokenBucket
from apex.gateway.routing import pick_instance
from apex.gateway.settings import GatewaySettings
from apex.gateway.uploads import parse_chunk


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- routing --------------------------------------------------------------------------


def test_pick_instance_is_stable_and_spreads_users() -> None:
    instances = [f"gw-{i}" for i in range(4)]
    users = [f"user-{i}" for i in range(2000)]
    picks = {user: pick_instance(user, instances) for user in users}
    assert picks == {user: pick_instance(user, reversed(instances)) for user in users}
    counts = collections.Counter(picks.values())
    assert set(counts) == set(instances)
    assert min(counts.values()) > 350  # about 500 each


def test_only_the_users_of_a_dead_instance_move() -> None:
    instances = ["a", "b", "c"]
    users = [f"user-{i}" for i in range(500)]
    before = {user: pick_instance(user, instances) for user in users}
    after = {user: pick_instance(user, ["a", "c"]) for user in users}
    moved = {user for user in users if before[user] != after[user]}
    assert moved == {user for user in users if before[user] == "b"}


def test_pick_instance_needs_an_instance() -> None:
    with pytest.raises(ValueError, match="no gateway instance"):
        pick_instance("u", [])


# -- breaker --------------------------------------------------------------------------


def state(breaker: Breaker) -> BreakerState:
    # A function, not the property: mypy would narrow the property between asserts.
    return breaker.state


def test_breaker_opens_after_the_threshold_then_half_opens_for_one_trial() -> None:
    clock = Clock()
    breaker = Breaker("auth", threshold=3, open_seconds=30, clock=clock)
    for _ in range(2):
        breaker.acquire()
        breaker.failure()
    assert state(breaker) is BreakerState.CLOSED
    breaker.acquire()
    breaker.failure()
    assert state(breaker) is BreakerState.OPEN
    with pytest.raises(CircuitOpen, match="circuit open: auth"):
        breaker.acquire()
    clock.now += 30
    assert state(breaker) is BreakerState.HALF_OPEN
    breaker.acquire()  # the trial
    with pytest.raises(CircuitOpen):
        breaker.acquire()  # only one at a time
    breaker.success()
    assert state(breaker) is BreakerState.CLOSED


def test_a_failed_trial_opens_the_breaker_again() -> None:
    clock = Clock()
    breaker = Breaker("postgres", threshold=1, open_seconds=5, clock=clock)
    breaker.acquire()
    breaker.failure()
    clock.now += 5
    breaker.acquire()
    breaker.failure()
    assert state(breaker) is BreakerState.OPEN
    clock.now += 4.9
    assert state(breaker) is BreakerState.OPEN


def test_a_success_resets_the_failure_count() -> None:
    breaker = Breaker("auth", threshold=2, open_seconds=5, clock=Clock())
    for _ in range(5):
        breaker.acquire()
        breaker.failure()
        breaker.acquire()
        breaker.success()
    assert state(breaker) is BreakerState.CLOSED


async def test_breaker_call_counts_only_the_listed_failures() -> None:
    breaker = Breaker("auth", threshold=1, open_seconds=5, clock=Clock())

    async def bad_input() -> None:
        raise KeyError("not the dependency's fault")

    with pytest.raises(KeyError):
        await breaker.call(bad_input, failures=(OSError,))
    assert state(breaker) is BreakerState.CLOSED

    async def down() -> None:
        raise OSError("connection refused")

    with pytest.raises(OSError, match="refused"):
        await breaker.call(down, failures=(OSError,))
    assert state(breaker) is BreakerState.OPEN


# -- rate limit -----------------------------------------------------------------------


def test_token_bucket_allows_the_burst_then_says_when() -> None:
    clock = Clock()
    bucket = TokenBucket(20, 1, clock=clock)
    assert [bucket.take() for _ in range(20)] == [0] * 20
    assert bucket.take() == 50  # one token every 50 ms
    clock.now += 0.051
    assert bucket.take() == 0
    assert bucket.take() > 0
    clock.now += 10
    assert [bucket.take() for _ in range(20)] == [0] * 20  # refills up to the burst only
    assert bucket.take() > 0


# -- frames ---------------------------------------------------------------------------


def test_parse_chunk() -> None:
    upload_id = uuid.uuid4()
    frame = upload_id.bytes + struct.pack(">Q", 65536) + b"data"
    chunk = parse_chunk(frame)
    assert chunk is not None
    assert (chunk.upload_id, chunk.offset, chunk.data) == (str(upload_id), 65536, b"data")
    empty = parse_chunk(upload_id.bytes + bytes(8))
    assert empty is not None
    assert (empty.offset, empty.data) == (0, b"")
    assert parse_chunk(b"\x00" * 23) is None


def test_message_frame_splices_type_and_seq() -> None:
    body = MessageLog.body(message_id="m1", sender="u1", to="user:u2", data={"x": [1]})
    assert message_frame(7, body) == (
        '{"type":"message","seq":7,"id":"m1","from":"u1","to":"user:u2","data":{"x":[1]}}'
    )


def test_metrics_render() -> None:
    text = Metrics(messages_in=3).render(2, {"auth": BreakerState.OPEN})
    assert "apex_gateway_connections 2\n" in text
    assert "apex_gateway_messages_in_total 3\n" in text
    assert 'apex_gateway_breaker_state{dependency="auth"} 1\n' in text


# -- notes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [None, [], {}, {"title": ""}, {"title": "x" * 201}, {"title": 1}, {"title": "t", "body": 2}],
)
def test_validate_note_refuses(data: object) -> None:
    with pytest.raises(NoteError) as info:
        validate_note(data)
    assert info.value.code == "invalid"


def test_validate_note_accepts() -> None:
    assert validate_note({"title": "t" * 200, "body": ""}) == ("t" * 200, "")
    assert validate_note({"title": "t"}) == ("t", "")


# -- settings -------------------------------------------------------------------------


def test_settings_defaults() -> None:
    settings = GatewaySettings.from_env({"APEX_REDIS_URL": "redis://localhost:6379/0"})
    assert settings.rate == Rate(20, 1.0)
    assert settings.breaker == Rate(5, 30.0)
    assert (settings.ping_interval, settings.ping_timeout) == (20.0, 20.0)
    assert (settings.max_message, settings.send_queue, settings.replay_buffer) == (
        65536,
        1000,
        1000,
    )
    assert settings.compression is True
    assert settings.auth_url is None
    assert len(settings.instance_id) == 12
    assert settings.admin_token is None
    assert settings.binary_rate == Rate(100, 1.0)
    assert (settings.upload_ttl, settings.uploads_per_user, settings.upload_bytes_per_user) == (
        3600,
        10,
        52_428_800,
    )
    assert (settings.stream_ttl, settings.broadcast_permission) == (86_400, "realtime:broadcast")
    assert (settings.shutdown_grace, settings.session_sweep) == (5.0, 2.0)


def test_settings_from_env() -> None:
    settings = GatewaySettings.from_env(
        {
            "APEX_REDIS_URL": "redis://localhost:6379/0",
            "APEX_AUTH_URL": "http://auth:8000/",
            "APEX_GATEWAY_INSTANCE_ID": "gw-1",
            "APEX_WS_RATE": "5/2",
            "APEX_WS_COMPRESSION": "off",
            "APEX_WS_PING_INTERVAL": "0.5",
            "APEX_ADMIN_TOKEN": "s3cret",
            "APEX_WS_BINARY_RATE": "10/2",
            "APEX_WS_UPLOAD_TTL": "0.25",
            "APEX_WS_UPLOADS_PER_USER": "3",
            "APEX_WS_UPLOAD_BYTES_PER_USER": "1000",
            "APEX_WS_STREAM_TTL": "120",
            "APEX_WS_BROADCAST_PERMISSION": "news:announce",
            "APEX_WS_SHUTDOWN_GRACE": "0.5",
            "APEX_WS_SESSION_SWEEP": "0.25",
        }
    )
    assert settings.admin_token == "s3cret"
    assert "s3cret" not in repr(settings)
    assert settings.binary_rate == Rate(10, 2.0)
    assert (settings.upload_ttl, settings.uploads_per_user, settings.upload_bytes_per_user) == (
        0.25,
        3,
        1000,
    )
    assert (settings.stream_ttl, settings.broadcast_permission) == (120, "news:announce")
    assert (settings.shutdown_grace, settings.session_sweep) == (0.5, 0.25)
    assert settings.auth_url == "http://auth:8000"
    assert settings.instance_id == "gw-1"
    assert settings.rate == Rate(5, 2.0)
    assert settings.compression is False
    assert settings.ping_interval == 0.5


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "APEX_REDIS_URL is required"),
        ({"APEX_REDIS_URL": "http://x"}, "APEX_REDIS_URL must start with"),
        ({"APEX_WS_RATE": "20"}, "APEX_WS_RATE must be count/seconds"),
        ({"APEX_WS_RATE": "0/1"}, "APEX_WS_RATE must be count/seconds"),
        ({"APEX_WS_BREAKER": "five/30"}, "APEX_WS_BREAKER must be count/seconds"),
        ({"APEX_WS_SEND_QUEUE": "1.5"}, "APEX_WS_SEND_QUEUE must be a whole number"),
        ({"APEX_WS_MAX_MESSAGE": "0"}, "APEX_WS_MAX_MESSAGE must be greater than 0"),
        ({"APEX_WS_PING_TIMEOUT": "soon"}, "APEX_WS_PING_TIMEOUT must be a number"),
        ({"APEX_WS_COMPRESSION": "yes"}, "APEX_WS_COMPRESSION must be on or off"),
        ({"APEX_GATEWAY_INSTANCE_ID": "a b"}, "APEX_GATEWAY_INSTANCE_ID must be"),
        ({"APEX_AUTH_URL": "ftp://auth"}, "APEX_AUTH_URL must start with"),
        ({"APEX_WS_BINARY_RATE": "fast"}, "APEX_WS_BINARY_RATE must be count/seconds"),
        ({"APEX_WS_UPLOAD_TTL": "0"}, "APEX_WS_UPLOAD_TTL must be a positive number of seconds"),
        ({"APEX_WS_UPLOADS_PER_USER": "0"}, "APEX_WS_UPLOADS_PER_USER must be greater than 0"),
        ({"APEX_WS_UPLOAD_BYTES_PER_USER": "-1"}, "APEX_WS_UPLOAD_BYTES_PER_USER must be at"),
        ({"APEX_WS_STREAM_TTL": "0"}, "APEX_WS_STREAM_TTL must be at least 1"),
        ({"APEX_WS_BROADCAST_PERMISSION": "Broadcast"}, "APEX_WS_BROADCAST_PERMISSION must"),
        ({"APEX_WS_SHUTDOWN_GRACE": "0"}, "APEX_WS_SHUTDOWN_GRACE must be a positive number"),
        ({"APEX_WS_SESSION_SWEEP": "never"}, "APEX_WS_SESSION_SWEEP must be a number"),
    ],
)
def test_settings_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    base = {"APEX_REDIS_URL": "redis://localhost:6379/0"}
    if not env:
        base = {}
    with pytest.raises(ConfigError, match=message):
        GatewaySettings.from_env({**base, **env})
