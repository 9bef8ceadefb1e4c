"""004#13 metrics collection aggregation pipeline: every service's `/metrics` is scraped
and read with prometheus_client's own parser, counters summed across instances equal
the work done, and no counter goes down between scrapes.

The rules under test: every service answers `GET /metrics` (admin token) with the
Prometheus text format (contract-data.md, contract-gateway.md, and apex.auth's
`apex_auth_requests_total{method,status}`, notes-data.md); apex.data counts each read
it serves in `apex_data_reads_total{source}`, per instance, so that a Prometheus
`sum without (instance, source)` over two instances is the number of reads both served.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from apex import topology
from apex_testkit import Platform
from db_tests.client import BILLING_READ, MakeUser, admin_headers
from db_tests.state import Samples

AGGREGATION = pytest.mark.bvj(
    segment="platform", goal="Dashboards add up what every instance of every service did",
    mrr=7000, scenario="004#13",
)  # fmt: skip
pytestmark = [AGGREGATION, pytest.mark.L3]

# (service, instance) -> its samples: what one scrape of several targets gives.
Scrape = dict[tuple[str, int], Samples]


@contextlib.asynccontextmanager
async def _targets(
    platform: Platform, instances: Mapping[str, int]
) -> AsyncIterator[dict[tuple[str, int], httpx.AsyncClient]]:
    """A client of each instance of each service (`instances`: how many of each)."""
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for name, count in instances.items():
            for number in range(count):
                clients[(name, number)] = await stack.enter_async_context(
                    platform.client(name, instance=number)
                )
        yield clients


async def _scrape_one(client: httpx.AsyncClient, admin_token: str) -> tuple[Samples, set[str]]:
    """The samples of one target, and the names of the samples of its counters."""
    response = await client.get("/metrics", headers=admin_headers(admin_token))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    samples: Samples = {}
    counters: set[str] = set()
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
            if family.type == "counter" and s.name.endswith("_total"):
                counters.add(s.name)
    return samples, counters


async def _scrape(
    clients: Mapping[tuple[str, int], httpx.AsyncClient], admin_token: str
) -> tuple[Scrape, set[str]]:
    """Every target at once, as a Prometheus server scrapes."""
    answers = await asyncio.gather(*(_scrape_one(c, admin_token) for c in clients.values()))
    scrape = {target: samples for target, (samples, _) in zip(clients, answers, strict=True)}
    return scrape, {name for _, counters in answers for name in counters}


def _total(scrape: Scrape, name: str, *, service: str | None = None) -> float:
    """`sum(name)` over every target (of `service`) and label set."""
    return sum(
        value
        for (target_service, _), samples in scrape.items()
        if service is None or target_service == service
        for (sample_name, _), value in samples.items()
        if sample_name == name
    )


async def test_every_service_is_scraped_and_no_counter_goes_down(
    clean_platform: Platform, admin_token: str, make_data_user: MakeUser
) -> None:
    async with _targets(clean_platform, dict.fromkeys(topology.SERVICES, 1)) as clients:
        first, counters = await _scrape(clients, admin_token)
        # Every service exposes counters the parser reads as counters.
        for name in topology.SERVICES:
            assert any(n.startswith(f"apex_{name}_") for n in counters), (name, counters)
        user = await make_data_user(permissions=(BILLING_READ,))
        data = clients[("data", 0)]
        assert (await data.get("/v1/usage/summary", headers=user.headers)).status_code == 200
        second, _ = await _scrape(clients, admin_token)
    went_down = {
        (target, key): (value, second[target].get(key))
        for target, samples in first.items()
        for key, value in samples.items()
        if key[0] in counters and second[target].get(key, -1.0) < value
    }
    assert not went_down, went_down
    # Work between the scrapes shows: auth answered the user's set-up, data its read.
    assert _total(second, "apex_auth_requests_total") > _total(first, "apex_auth_requests_total")
    assert _total(second, "apex_data_reads_total") == _total(first, "apex_data_reads_total") + 1


async def test_counters_of_two_data_instances_sum_to_the_work_done(
    clean_platform: Platform, admin_token: str, make_data_user: MakeUser
) -> None:
    user = await make_data_user(permissions=(BILLING_READ,))
    reads = {0: 3, 1: 2}
    async with _targets(clean_platform, {"data": 2}) as clients:
        before, _ = await _scrape(clients, admin_token)
        for number, count in reads.items():
            for _ in range(count):
                answer = await clients[("data", number)].get(
                    "/v1/usage/summary", headers=user.headers
                )
                assert answer.status_code == 200, answer.text
        after, _ = await _scrape(clients, admin_token)
    name = "apex_data_reads_total"
    for number, count in reads.items():
        target = ("data", number)
        own = _total({target: after[target]}, name) - _total({target: before[target]}, name)
        assert own == count, (target, own)
    assert _total(after, name) - _total(before, name) == sum(reads.values())
