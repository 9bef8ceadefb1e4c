"""apex.data's data-flow pieces that need no server: APEX_OUTBOX_RELAY, rendezvous
hashing, the outbox payload as ClickHouse values, the cache's key layout."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from apex.common.settings import ConfigError
from apex.data import load_settings
from apex.data.cache import SCHEMA_VERSION, Cache, rendezvous_node
from apex.data.outbox import enqueue

BASE = {
    "APEX_DATABASE_URL": "postgresql://u@127.0.0.1:5432/db",
    "APEX_REDIS_URL": "redis://127.0.0.1:6379/0",
    "APEX_AUTH_URL": "http://127.0.0.1:8000",
}


@pytest.mark.parametrize(("text", "expected"), [("on", True), ("OFF", False), ("0", False)])
def test_outbox_relay_switch(text: str, expected: bool) -> None:
    assert load_settings({**BASE, "APEX_OUTBOX_RELAY": text}).outbox_relay is expected


def test_outbox_relay_defaults_on_and_refuses_other_words() -> None:
    assert load_settings(BASE).outbox_relay is True
    with pytest.raises(ConfigError, match="APEX_OUTBOX_RELAY must be on or off"):
        load_settings({**BASE, "APEX_OUTBOX_RELAY": "sometimes"})


def test_rendezvous_is_stable_and_needs_nodes() -> None:
    nodes = ["redis://a:1/0", "redis://b:1/0", "redis://c:1/0"]
    tenant = str(uuid.uuid4())
    assert rendezvous_node(tenant, nodes) == rendezvous_node(tenant, list(nodes))
    # The owner does not depend on the order of the list, only on the node itself.
    assert (
        nodes[rendezvous_node(tenant, nodes)] == nodes[::-1][rendezvous_node(tenant, nodes[::-1])]
    )
    with pytest.raises(ValueError, match="at least one node"):
        rendezvous_node(tenant, [])


async def test_cache_key_layout() -> None:
    cache = Cache(["redis://127.0.0.1:9/0"], prefix="p:")
    try:
        assert cache.generation_key("t") == f"p:data:v{SCHEMA_VERSION}:gen:t"
        assert cache.entry_key("t", 3) == f"p:data:v{SCHEMA_VERSION}:summary:t:3"
        assert cache.entry_key("t", 3, "credits") == f"p:data:v{SCHEMA_VERSION}:summary:t:3:credits"
    finally:
        await cache.close()


def test_cache_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one Redis URL"):
        Cache([])
    with pytest.raises(ValueError, match="positive numbers of seconds"):
        Cache(["redis://127.0.0.1:9/0"], ttl=0)


def test_clickhouse_instants_are_aware_utc_whole_seconds() -> None:
    from apex.data.outbox import _clickhouse_time

    moment = _clickhouse_time("2026-01-02T03:04:05.678+02:00")
    assert moment == dt.datetime(2026, 1, 2, 1, 4, 5, tzinfo=dt.UTC)
    assert _clickhouse_time("2026-01-02T03:04:05") == dt.datetime(
        2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC
    )


async def test_enqueue_refuses_unknown_topics_and_no_transaction() -> None:
    class NoTransaction:
        def is_in_transaction(self) -> bool:
            return False

    with pytest.raises(ValueError, match="unknown outbox topic"):
        await enqueue(NoTransaction(), "nope", {})
    with pytest.raises(RuntimeError, match="inside the business write's transaction"):
        await enqueue(NoTransaction(), "usage", {})
