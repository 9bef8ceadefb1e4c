"""Redis beyond the run's server: the run's replica follows it, the extra nodes are
servers of their own, and a test's own pair can have its link cut (lag measured) and its
replica promoted."""

from __future__ import annotations

import pytest
import redis

from apex_testkit import RedisNamespace, RedisPair, RedisReplica
from apex_testkit._faults import parse_address
from apex_testkit._provisioning import redis_replica as replicas
from apex_testkit._provisioning._chain import ServiceUnavailable, obtain
from apex_testkit._run import Run


def test_the_replica_follows_a_write(
    redis_namespace: RedisNamespace, redis_replica: RedisReplica
) -> None:
    key = f"{redis_replica.prefix}followed"
    assert redis_replica.prefix == redis_namespace.prefix
    redis_namespace.client().set(key, "yes")
    redis_replica.wait_synced()
    replica = redis_replica.client()
    assert replica.get(key) == "yes"
    with pytest.raises(redis.ReadOnlyError):
        replica.set(key, "no")


def test_the_replica_shows_the_reset(
    apex_worker, redis_namespace: RedisNamespace, redis_replica: RedisReplica
) -> None:
    apex_worker.reset()  # what the tests before this one wrote (no clean_platform here)
    redis_namespace.client().set(f"{redis_namespace.prefix}k", "v")
    redis_replica.wait_synced()
    assert redis_replica.client().dbsize() == 1
    apex_worker.reset()
    assert redis_replica.client().dbsize() == 0


def test_the_nodes_are_servers_of_their_own(
    apex_worker, redis_namespace: RedisNamespace, redis_nodes: tuple[RedisNamespace, ...]
) -> None:
    apex_worker.reset()  # what the tests before this one wrote (no clean_platform here)
    addresses = {parse_address(n.url) for n in (redis_namespace, *redis_nodes)}
    assert len(addresses) == 4
    first, *others = redis_nodes
    first.client().set(f"{first.prefix}k", "v")
    assert [node.client().dbsize() for node in others] == [0, 0]
    assert redis_namespace.client().dbsize() == 0


def test_a_cut_link_makes_lag_measurable_and_promotion_takes_writes(
    redis_pair: RedisPair,
) -> None:
    master = redis.Redis.from_url(redis_pair.primary_url, decode_responses=True)
    replica = redis_pair.replica
    master.set("before", "1")
    replica.wait_synced()
    assert replica.lag_bytes() == 0
    redis_pair.link.down()  # the replica's connection is cut
    master.set("during", "2")
    assert replica.lag_bytes() > 0
    assert replica.client().get("during") is None
    redis_pair.link.up()  # the replica reconnects and catches up
    replica.wait_synced()
    assert replica.client().get("during") == "2"
    redis_pair.kill_primary()
    redis_pair.promote()
    replica.client().set("after", "3")
    assert replica.client().mget("before", "during", "after") == ["1", "2", "3"]


def test_a_pairs_master_syncs_its_replica_through_a_file(redis_pair: RedisPair) -> None:
    """Not diskless: after a diskless first sync Redis 7 streams writes to the replica only
    from its next ACK (once a second), and a test's first write arrived up to 1 s late."""
    master = redis.Redis.from_url(redis_pair.primary_url, decode_responses=True)
    assert master.config_get("repl-diskless-sync") == {"repl-diskless-sync": "no"}
    master.set("first", "1")
    redis_pair.replica.wait_synced()
    assert redis_pair.replica.client().get("first") == "1"


@pytest.mark.parametrize("service", [replicas.REPLICA, replicas.NODE_SERVICES[0]])
def test_an_external_redis_has_no_servers_of_the_kit_beside_it(service, monkeypatch) -> None:
    """The run's Redis is external (url): the kit has no binary to start more from."""
    monkeypatch.setenv(replicas.REPLICA_URL_ENV, "redis://127.0.0.1:9/0")
    run = Run.create()
    try:
        external = {"service": "redis", "provider": "url", "url": "redis://127.0.0.1:9/0"}
        run.store("server-redis", external)
        with pytest.raises(ServiceUnavailable) as caught:
            obtain(run, service, ("url",))
    finally:
        run.close()
    message = str(caught.value)
    assert message.startswith(f"No {service.title} server for this test run. Providers tried")
    assert "(the provider of the run's redis server: url)" in message
    if service is replicas.REPLICA:  # the replica of an external Redis is the user's
        assert "- url: redis://127.0.0.1:9/0 does not answer PING" in message
        assert "APEX_TEST_REDIS_REPLICA_URL is set: the kit uses that server or none" in message
    else:
        assert "- url: the run's Redis is not the kit's own" in message
        assert "Fix: --services redis=local" in message
