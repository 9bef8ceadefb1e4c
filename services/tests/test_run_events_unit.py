"""Run events to the user's WebSocket, the pure parts: a server-side event's body keeps
its own type in the gateway's frame (a client's message is still `message`), and
apex.agents' settings for the relay (APEX_RUN_EVENTS and the users' logs' cap and TTL)."""

from __future__ import annotations

import json

import pytest

from apex.agents import load_settings
from apex.common.settings import ConfigError
from apex.common.user_logs import EVENT_PREFIX, event_body
from apex.gateway.fanout import MessageLog, message_frame

REQUIRED = {
    "APEX_DATABASE_URL": "postgresql://u:pw@db:5432/apex",
    "APEX_REDIS_URL": "redis://cache:6379/0",
    "APEX_AUTH_URL": "http://auth:8000/",
    "APEX_LLM_BASE_URL": "http://llm:9000/v1/",
    "APEX_LLM_API_KEY": "sk-secret",
}


def test_an_events_frame_keeps_its_type_and_gets_the_seq() -> None:
    body = event_body("run.event", run_id="r1", event={"seq": 1, "kind": "run.submitted"})
    assert body.startswith(EVENT_PREFIX)
    assert json.loads(message_frame(9, body)) == {
        "type": "run.event",
        "seq": 9,
        "run_id": "r1",
        "event": {"seq": 1, "kind": "run.submitted"},
    }


def test_a_clients_message_whose_data_has_a_type_stays_a_message() -> None:
    body = MessageLog.body(message_id="m1", sender="u1", to="user:u2", data={"type": "run.event"})
    frame = json.loads(message_frame(3, body))
    assert (frame["type"], frame["seq"], frame["data"]) == ("message", 3, {"type": "run.event"})


def test_run_events_are_on_by_default_with_the_gateways_log_bounds() -> None:
    settings = load_settings(REQUIRED)
    assert (settings.run_events, settings.ws_replay_buffer, settings.ws_stream_ttl) == (
        True,
        1000,
        86_400,
    )
    off = load_settings({**REQUIRED, "APEX_RUN_EVENTS": "OFF", "APEX_WS_REPLAY_BUFFER": "50"})
    assert (off.run_events, off.ws_replay_buffer) == (False, 50)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("APEX_RUN_EVENTS", "yes"), ("APEX_WS_REPLAY_BUFFER", "0"), ("APEX_WS_STREAM_TTL", "x")],
)
def test_a_bad_run_events_setting_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings({**REQUIRED, variable: value})
